"""Declared documents: a store's contents kept in sync with the sources its spec names (docs/sources.md)."""
