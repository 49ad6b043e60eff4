"""`vectorstore validate` and `vectorstore schema`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from config.spec import check_file, schema_text


def validate(files: Sequence[Path]) -> int:
    """Print every problem and warning of every file, one per line; 0 if all are valid (warnings or not),
    1 otherwise."""
    invalid = 0
    for path in files:
        result = check_file(path)
        for problem in sorted([*result.problems, *result.warnings], key=lambda p: (p.line, p.column, p.level)):
            print(problem, file=sys.stderr)
        if result.problems:
            invalid += 1
    if invalid:
        print(f"{invalid} of {len(files)} spec file(s) invalid", file=sys.stderr)
        return 1
    return 0


def print_schema() -> int:
    sys.stdout.write(schema_text())
    return 0
