"""Ingestion: text extraction, chunking, the queue worker that embeds and writes chunks, and `vectorstore ingest`."""
