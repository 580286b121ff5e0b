"""The REST API (Kana endpoint names) over the running exchange."""
