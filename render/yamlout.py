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


# NEL, LS and PS are line breaks to a YAML reader: PyYAML writes them raw in plain, single-quoted or block
# scalars, where the reader folds them into spaces. Only double quotes (as \N, \L, \P) keep them.
_UNICODE_BREAKS = re.compile("[\x85\u2028\u2029]")


def _str(dumper: yaml.representer.SafeRepresenter, value: str) -> yaml.ScalarNode:
    if _UNICODE_BREAKS.search(value):
        style: str | None = '"'
    elif "\n" in value:
        style = "|"
    elif _NOT_A_STRING_ELSEWHERE.match(value):
        style = "'"
    else:
        style = None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class PythonDumper(yaml.SafeDumper):
    """PyYAML's pure-Python emitter; never emits anchors (each object stands alone)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


PythonDumper.add_representer(str, _str)
DUMPERS: dict[str, type[Any]] = {"python": PythonDumper}

if getattr(yaml, "__with_libyaml__", False):

    class LibyamlDumper(yaml.CSafeDumper):
        """The same dumper on libyaml's emitter: about 7 times faster on a 500-store spec. Tests prove it
        writes the same bytes as the pure-Python one for what `choose_dumper` gives it, so the output does
        not depend on whether libyaml is installed."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    LibyamlDumper.add_representer(str, _str)
    DUMPERS["libyaml"] = LibyamlDumper

# Where the two emitters differ (found by the fuzz test in tests/rendering): libyaml escapes characters outside
# the BMP (emoji) and the BOM, which PyYAML writes as they are. A document holding any of them goes through
# the pure-Python emitter.
_EMITTERS_DIFFER = re.compile("[\U00010000-\U0010ffff\ufeff]")
# And mapping keys with a line break: the two decide differently between `key:` and `? key`.
_KEY_BREAKS = re.compile("[\r\n\x85\u2028\u2029]")


def _needs_python_emitter(value: Any) -> bool:
    if isinstance(value, str):
        return _EMITTERS_DIFFER.search(value) is not None
    if isinstance(value, dict):
        return any(
            _needs_python_emitter(key)
            or _needs_python_emitter(item)
            or (isinstance(key, str) and _KEY_BREAKS.search(key))
            for key, item in value.items()
        )
    if isinstance(value, list):
        return any(_needs_python_emitter(item) for item in value)
    return False


def choose_dumper(document: Any) -> type[Any]:
    """libyaml when PyYAML has it and the document holds nothing the two emitters write differently."""
    if "libyaml" in DUMPERS and not _needs_python_emitter(document):
        return DUMPERS["libyaml"]
    return PythonDumper


def dump(document: Any, *, header: str = HEADER, dumper: type[Any] | None = None) -> str:
    """One YAML document, keys in the order they were built (builders order them deterministically)."""
    text = yaml.dump(
        document,
        Dumper=dumper or choose_dumper(document),
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=2**20,
        indent=2,
    )
    return header + text
