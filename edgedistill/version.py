"""The package version (one place; the report and the run manifest read it)."""
__version__ = "0.1.0"
