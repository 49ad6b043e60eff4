"""One store as a file: `vectorstore export` / `vectorstore import` (docs/operations.md, "One store as a file").

`format` reads and writes the archive (versioned, framed, CRC-32 per record and SHA-256 over the whole);
`dump` streams a store out of the database and `load` streams an archive into one, in a single transaction.
"""
