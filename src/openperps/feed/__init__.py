"""The WebSocket feed: a sans-I/O session per connection (``session``), the fan-out
(``hub``) and the picows server that drives them (``server``)."""
