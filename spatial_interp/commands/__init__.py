"""Subcommands of the ``spatial-interp`` command line (one module each)."""
