"""The ``openperps`` command line."""
