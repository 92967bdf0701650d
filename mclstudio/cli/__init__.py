"""The command line (top layer)."""
