"""Wiring: the only place that owns the event loop, the clock, timers, the sequencer and the
keepers."""
