"""Fault, load-shape, hostile-input and contract tests of the running server (issue 6)."""
