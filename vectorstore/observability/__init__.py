"""Structured logs and Prometheus metrics, used by every part of the server."""
