"""YAML output: data in, text out, through PyYAML's safe dumper (no templates, so no quoting to get wrong).

The dumper decides quoting from the value itself: `no`, `0123`, `a: b` or `"x"` come out quoted and read
back as the same string. PyYAML quotes by YAML 1.1 rules; Kubernetes reads with go-yaml and our own spec
loader with YAML 1.2, which also take `0o17`, `1e3` or `1_000` for numbers, so those are quoted too.
Multi-line strings use block style when that is lossless, so the spec in the ConfigMap stays readable; when
it is not (trailing spaces, control characters) PyYAML falls back to quotes.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

HEADER = "# Rendered by `vectorstore render` from the stack spec. Edit the spec and render again; do not edit.\n"


class _Dumper(yaml.SafeDumper):
    """SafeDumper that never emits anchors (each object stands alone) and prefers block style for text."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# Plain scalars that YAML 1.2 or go-yaml (which drops `_` and parses ints with Go's base prefixes) would
# read as numbers or booleans, beyond what PyYAML's YAML 1.1 resolver already quotes.
_NOT_A_STRING_ELSEWHERE = re.compile(
    r"""^(?:
        [-+]?[0-9_]+
      | [-+]?0[oObBxX][0-9a-fA-F_]+
      | [-+]?(?:\.[0-9_]+|[0-9_]+(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
      | [-+]?\.(?:inf|Inf|INF)
      | \.(?:nan|NaN|NAN)
      | (?:true|True|TRUE|false|False|FALSE|null|Null|NULL|~)
    )$""",
    re.VERBOSE,
)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        style: str | None = "|"
    elif _NOT_A_STRING_ELSEWHERE.match(value):
        style = "'"
    else:
        style = None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(document: Any, *, header: str = HEADER) -> str:
    """One YAML document, keys in the order they were built (builders order them deterministically)."""
    text = yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=2**20,
        indent=2,
    )
    return header + text
