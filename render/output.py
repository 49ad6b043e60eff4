"""The output directory: compare it with a render (--check), or replace it whole (never half-written)."""

from __future__ import annotations

import difflib
import os
import secrets
import shutil
from pathlib import Path

from render.yamlout import HEADER


class OutputError(Exception):
    """The output directory can't be read or written; the message says which and why."""


def read_tree(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` by relative POSIX path; empty when it does not exist."""
    if not directory.exists():
        return {}
    if not directory.is_dir():
        raise OutputError(f"{directory}: exists and is not a directory")
    found: dict[str, bytes] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() or path.is_symlink():
            found[path.relative_to(directory).as_posix()] = path.read_bytes() if path.is_file() else b""
    return found


def diff(directory: Path, expected: dict[str, str]) -> str:
    """A unified diff from what is in `directory` to what the spec renders; empty when identical."""
    actual = read_tree(directory)
    chunks: list[str] = []
    for name in sorted(set(actual) | set(expected)):
        want = expected.get(name)
        have_bytes = actual.get(name)
        have = None if have_bytes is None else have_bytes.decode("utf-8", errors="replace")
        if want == have:
            continue
        before = f"{directory / name}" if have is not None else "/dev/null"
        after = f"{directory / name}" if want is not None else "/dev/null"
        lines = difflib.unified_diff(
            (have or "").splitlines(keepends=True),
            (want or "").splitlines(keepends=True),
            fromfile=before,
            tofile=after,
        )
        text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
        if not text:
            # Same text but different bytes (for instance invalid UTF-8): still a difference.
            text = f"--- {before}\n+++ {after}\n@@ bytes differ @@\n"
        chunks.append(text)
    return "".join(chunks)


def _ours(directory: Path) -> bool:
    """True when `directory` is empty or holds an earlier render (its kustomization.yaml carries our header)."""
    if not any(directory.iterdir()):
        return True
    kustomization = directory / "kustomization.yaml"
    try:
        return kustomization.read_text(encoding="utf-8").startswith(HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def write(directory: Path, files: dict[str, str]) -> None:
    """Replace `directory` with exactly `files`: written beside it first, then swapped in by rename.

    A directory that is neither empty nor an earlier render is refused rather than replaced: `-o .` must
    never delete a checkout.
    """
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{directory}: exists and is not a directory")
    if directory.is_dir() and not _ours(directory):
        raise OutputError(
            f"{directory}: not empty and not an earlier render (no kustomization.yaml written by vectorstore "
            "render); choose an empty or new directory"
        )
    shown = directory
    # Absolute, so that `-o .` names the directory itself rather than an empty last component.
    directory = Path(os.path.abspath(directory))
    parent = directory.parent
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = parent / f".{directory.name}.render-{token}"
    retired = parent / f".{directory.name}.old-{token}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        for name, text in files.items():
            with open(staging / name, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
        if directory.exists():
            directory.rename(retired)
        staging.rename(directory)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if retired.exists() and not directory.exists():
            retired.rename(directory)
        raise OutputError(f"{shown}: cannot write: {exc.strerror or exc}") from exc
    shutil.rmtree(retired, ignore_errors=True)
