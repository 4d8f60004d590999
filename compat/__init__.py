"""Fixes that make the installed third-party packages work together; detectors and generation both use them."""
