"""Typed options of the server's commands. `cli` parses argv into these; `vectorstore.commands` runs them.

They live here, not in `cli`, so the server never imports the command line (the import rule is
`cli -> vectorstore`, never back). Plain dataclasses with no heavy imports: `cli` loads this module for
every command, `validate` in a pre-commit hook included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServeOptions:
    spec: Path
    host: str
    port: int | None
    data_dir: Path | None
    workers: int | None = None
    """Server processes on the port; None means `server.workers` from the spec."""


@dataclass(frozen=True)
class PlanOptions:
    spec: Path
    data_dir: Path | None


@dataclass(frozen=True)
class SyncOptions:
    spec: Path
    data_dir: Path | None
    allow_deletes: bool = False


@dataclass(frozen=True)
class IngestOptions:
    store: str
    paths: tuple[Path, ...]
    base_url: str
    api_key_env: str
    chunk_size: int | None


@dataclass(frozen=True)
class ExportOptions:
    store: str
    output: Path
    spec: Path
    data_dir: Path | None


@dataclass(frozen=True)
class ImportOptions:
    archive: Path
    as_: str | None
    replace: bool
    spec: Path
    data_dir: Path | None
