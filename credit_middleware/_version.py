"""The package's version, the one place it is written (read by the build and the CLI)."""

__version__ = "0.1.0"
