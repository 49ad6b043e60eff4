"""The `vectorstore` command: parse argv into a typed options object, then hand it to one command.

This package is the only place that sees all three of config, render and vectorstore; it keeps
`render -> config <- vectorstore` intact by importing each command lazily, so `validate` in a
pre-commit hook never pays for aiohttp or psycopg. The server's option types come from
`vectorstore.options` (a module with no heavy imports): nothing under vectorstore/ imports cli.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vectorstore.options import (
    ExportOptions,
    ImportOptions,
    IngestOptions,
    PlanOptions,
    ServeOptions,
    SyncOptions,
)

DEFAULT_SPEC = "config/stack.yaml"


@dataclass(frozen=True)
class ValidateOptions:
    files: tuple[Path, ...]


@dataclass(frozen=True)
class SchemaOptions:
    pass


@dataclass(frozen=True)
class RenderOptions:
    spec: Path
    output: Path
    check: bool


Options = (
    ValidateOptions
    | SchemaOptions
    | RenderOptions
    | ServeOptions
    | PlanOptions
    | SyncOptions
    | IngestOptions
    | ExportOptions
    | ImportOptions
)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _server_url(text: str) -> str:
    """`ingest --base-url`: an http(s) URL without user:password (the key comes from --api-key-env). The value
    is not quoted back: it may hold a password, and the shell's output may land in a CI log."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError("must be an http:// or https:// URL")
    if "@" in rest.split("/", 1)[0]:
        raise argparse.ArgumentTypeError(
            "must not hold credentials (user:password@): the bearer key comes from the --api-key-env variable"
        )
    return text


def _workers(text: str) -> int:
    # The same bound as the spec's server.workers, so the flag and the field accept the same values.
    from config.model import MAX_SERVER_WORKERS

    value = _positive(text)
    if value > MAX_SERVER_WORKERS:
        raise argparse.ArgumentTypeError(f"{value} is more than {MAX_SERVER_WORKERS} worker processes")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vectorstore",
        description="Declarative pgvector vector stores for LiteLLM: validate, render, serve.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check spec files; exit 1 if any is invalid")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")

    commands.add_parser("schema", help="print the spec's JSON Schema")

    render = commands.add_parser("render", help="render Kubernetes manifests and litellm.yml from a spec")
    _render_arguments(render)

    serve = commands.add_parser("serve", help="reconcile the declared stores, then serve the API")
    serve.add_argument("--spec", type=Path, default=Path(DEFAULT_SPEC), help=f"spec file (default {DEFAULT_SPEC})")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=None, help="port (default: server.port from the spec)")
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded PostgreSQL data directory, used when neither PG* nor DATABASE_URL is set",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="server processes sharing the port, each with its own pool (default: server.workers from the spec)",
    )

    plan = commands.add_parser("plan", help="show what reconcile would change; exit 3 if anything")
    plan.add_argument("--spec", type=Path, default=Path(DEFAULT_SPEC), help=f"spec file (default {DEFAULT_SPEC})")
    plan.add_argument("--data-dir", type=Path, default=None, help="embedded PostgreSQL data directory")

    sync = commands.add_parser(
        "sync", help="sync every declared source once, wait for its ingestion; exit 1 if anything failed"
    )
    sync.add_argument("--spec", type=Path, default=Path(DEFAULT_SPEC), help=f"spec file (default {DEFAULT_SPEC})")
    sync.add_argument("--data-dir", type=Path, default=None, help="embedded PostgreSQL data directory")
    sync.add_argument(
        "--allow-deletes",
        action="store_true",
        help="apply deletions the brake (sync.max_delete) would hold: confirm that the files are really gone",
    )

    ingest = commands.add_parser("ingest", help="upload files into a store through the HTTP API")
    ingest.add_argument("--store", required=True, help="store name or id")
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories")
    ingest.add_argument(
        "--base-url", type=_server_url, default="http://127.0.0.1:8000", help="server URL (default %(default)s)"
    )
    ingest.add_argument(
        "--api-key-env",
        default="VECTORSTORE_API_KEY",
        help="env var holding the bearer key (default %(default)s)",
    )
    ingest.add_argument("--chunk-size", type=_positive, default=None, help="static chunk size in tokens")

    export = commands.add_parser(
        "export", help="write one store (settings, files, chunks with their embeddings) to an archive file"
    )
    export.add_argument("store", metavar="STORE", help="store id or name")
    export.add_argument("-o", "--output", type=Path, required=True, help="archive file to write")
    _database_arguments(export)

    load = commands.add_parser(
        "import", help="load a store archive into the database in one transaction, with no embedding call"
    )
    load.add_argument("archive", type=Path, metavar="FILE", help="archive written by `vectorstore export`")
    load.add_argument(
        "--as",
        dest="as_",
        default=None,
        metavar="NAME|ID",
        help="import under a declared store's name, an id (vs_...), or a new name (default: the archive's own)",
    )
    load.add_argument(
        "--replace", action="store_true", help="drop a store with the same id first (in the same transaction)"
    )
    _database_arguments(load)
    return parser


def _database_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", type=Path, default=Path(DEFAULT_SPEC), help=f"spec file (default {DEFAULT_SPEC})")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded PostgreSQL data directory, used when neither PG* nor DATABASE_URL is set",
    )


def _render_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, metavar="SPEC", help="spec file")
    parser.add_argument("-o", "--output", type=Path, default=Path("manifests"), help="output directory")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 with a diff if the directory is stale"
    )


def parse(argv: Sequence[str]) -> Options:
    args = build_parser().parse_args(argv)
    return _options(args)


def _options(args: argparse.Namespace) -> Options:
    match args.command:
        case "validate":
            return ValidateOptions(files=tuple(args.files))
        case "schema":
            return SchemaOptions()
        case "render":
            return RenderOptions(spec=args.spec, output=args.output, check=args.check)
        case "serve":
            return ServeOptions(
                spec=args.spec, host=args.host, port=args.port, data_dir=args.data_dir, workers=args.workers
            )
        case "plan":
            return PlanOptions(spec=args.spec, data_dir=args.data_dir)
        case "sync":
            return SyncOptions(spec=args.spec, data_dir=args.data_dir, allow_deletes=args.allow_deletes)
        case "ingest":
            return IngestOptions(
                store=args.store,
                paths=tuple(args.paths),
                base_url=args.base_url,
                api_key_env=args.api_key_env,
                chunk_size=args.chunk_size,
            )
        case "export":
            return ExportOptions(store=args.store, output=args.output, spec=args.spec, data_dir=args.data_dir)
        case "import":
            return ImportOptions(
                archive=args.archive, as_=args.as_, replace=args.replace, spec=args.spec, data_dir=args.data_dir
            )
    raise AssertionError(args.command)


def run(options: Options) -> int:
    """Dispatch to the command; each returns its exit code."""
    match options:
        case ValidateOptions():
            from config.commands import validate

            return validate(options.files)
        case SchemaOptions():
            from config.commands import print_schema

            return print_schema()
        case RenderOptions():
            from render.command import render_command

            return render_command(options.spec, options.output, check=options.check)
        case ServeOptions():
            from vectorstore.commands import serve

            return serve(options)
        case PlanOptions():
            from vectorstore.commands import plan

            return plan(options)
        case SyncOptions():
            from vectorstore.commands import sync

            return sync(options)
        case IngestOptions():
            from vectorstore.ingest.cli import ingest

            return ingest(options)
        case ExportOptions():
            from vectorstore.archive.command import export_command

            return export_command(options)
        case ImportOptions():
            from vectorstore.archive.command import import_command

            return import_command(options)
    raise AssertionError(options)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return 130


def render_main(argv: Sequence[str] | None = None) -> int:
    """`render-manifests SPEC [-o DIR] [--check]`, the same as `vectorstore render`."""
    parser = argparse.ArgumentParser(prog="render-manifests", description="render manifests from a spec")
    _render_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run(RenderOptions(spec=args.spec, output=args.output, check=args.check))
