"""`vectorstore render SPEC [-o DIR] [--check]` (also `render-manifests`)."""

from __future__ import annotations

import sys
from pathlib import Path

from config import check_file
from render.manifests import render_files
from render.output import OutputError, diff, write


def render_command(spec: Path, output: Path, *, check: bool) -> int:
    """0 when written (or, with check, up to date); 1 on a bad spec, a stale directory or a write error."""
    result = check_file(spec)
    for warning in result.warnings:
        print(warning, file=sys.stderr)
    if result.spec is None:
        for problem in result.problems:
            print(problem, file=sys.stderr)
        print(f"{spec}: invalid; nothing written", file=sys.stderr)
        return 1
    files = render_files(result.spec)
    try:
        if check:
            changes = diff(output, files)
            if changes:
                sys.stdout.write(changes)
                hint = f"run `vectorstore render {spec} -o {output}`"
                print(f"{output} is out of date with {spec}: {hint}", file=sys.stderr)
                return 1
            return 0
        write(output, files)
    except OutputError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 1
    print(f"rendered {len(files)} files into {output}", file=sys.stderr)
    return 0
