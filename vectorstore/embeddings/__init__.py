"""Text in, vectors out: the client of an OpenAI-compatible embedding upstream."""
