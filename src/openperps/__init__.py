"""OpenPerps: a self-hostable perpetual-futures exchange and its Kana-compatible feed."""

__version__ = "0.1.0"
