"""The storage core: where the database is, the registry of stores, their tables, files and ingestion jobs,
declared-store reconcile, and the schema migrations. Everything here speaks SQL; nothing here speaks HTTP."""
