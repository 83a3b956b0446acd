"""The package version, and the version of what its converters and quantizers write (one place;
the report, the run manifest and the export ledger read them)."""
__version__ = "0.1.0"

ARTIFACTS_VERSION = 6
"""Bump when a converter or quantizer writes other bytes for the same inputs (or a check
judges the same file otherwise): exports recorded under another version are redone."""
