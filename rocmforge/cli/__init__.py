"""The ``rocmforge`` command line, one module per command."""
