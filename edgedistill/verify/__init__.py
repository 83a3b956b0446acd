"""Verification: every exported file judged against the model it came from (parity.py: the
figures, the thresholds table and the verdict)."""
