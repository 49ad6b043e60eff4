"""The server: app factory, database, reconcile, API, embedding client, ingestion. Imports config only."""
