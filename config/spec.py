"""Read a spec file: YAML safely, then the JSON Schema, then the semantic checks, all errors at once."""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs

from config import checks
from config.model import Spec, build_spec, shown_url
from config.yamlsafe import MAX_BYTES, JsonPath, LoadedDocument, Position, YamlProblem, load_yaml

SUPPORTED_VERSION = 1


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a spec, printed as FILE:LINE:COL: $.path: message (`warning: message` for a
    warning, which leaves the spec valid)."""

    file: str
    line: int
    column: int
    path: str
    message: str
    level: str = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.level == "warning" else ""
        return f"{self.file}:{self.line}:{self.column}: {self.path}: {prefix}{self.message}"


class SpecError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


@cache
def schema_text() -> str:
    return resources.files("config").joinpath("schema.json").read_text(encoding="utf-8")


@cache
def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_text())
    return schema


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_schema())


@cache
def _fast_validator() -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(_schema())


def schema_valid(data: Any) -> bool:
    """The fast yes/no of the Rust validator: ~200x quicker on a 500-store spec than `jsonschema`, whose
    detailed errors are only needed when the answer is no. tests/test_spec.py checks both agree."""
    return bool(_fast_validator().is_valid(data))


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/$defs/")
        node = {
            **_schema()["$defs"][ref.removeprefix("#/$defs/")],
            **{k: v for k, v in node.items() if k != "$ref"},
        }
    return node


def apply_defaults(data: Any, node: dict[str, Any] | None = None) -> Any:
    """Fill schema defaults, and empty objects for optional sections, without touching what was written."""
    node = _resolve(node if node is not None else _schema())
    if isinstance(data, dict) and "properties" in node:
        for key, sub in node["properties"].items():
            sub_resolved = _resolve(sub)
            if key not in data:
                if "maxProperties" in node:
                    continue  # a choice among keys (a source's `volume`): filling one in would make the choice
                if "default" in sub_resolved:
                    data[key] = copy.deepcopy(sub_resolved["default"])
                elif (
                    "properties" in sub_resolved
                    and not sub_resolved.get("required")
                    and key not in node.get("required", [])
                    and not sub_resolved.get("minProperties")
                    and not sub.get("deprecated")
                ):
                    # An optional section with nothing required becomes {} so its defaults apply. A required
                    # one stays missing, so the error names it rather than its first field; so does one that
                    # must name something (minProperties, such as a source's `volume`) until written, and a
                    # deprecated one, whose presence means the author wrote it (checks warn about it).
                    data[key] = {}
                else:
                    continue
            apply_defaults(data[key], sub_resolved)
    elif isinstance(data, list) and isinstance(node.get("items"), dict):
        for item in data:
            apply_defaults(item, node["items"])
    return data


def _schema_findings(data: Any) -> list[tuple[JsonPath, str, bool]]:
    """(path, message, points_at_key) for each schema error, in the words a spec author needs."""
    findings: list[tuple[JsonPath, str, bool]] = []
    if schema_valid(data):
        return findings
    for error in _validator().iter_errors(data):
        path: JsonPath = tuple(error.absolute_path)
        schema = error.schema if isinstance(error.schema, dict) else {}
        validator = error.validator
        if validator == "additionalProperties" and isinstance(error.instance, dict):
            known = list(schema.get("properties", {}))
            for extra in sorted(set(error.instance) - set(known)):
                hint = difflib.get_close_matches(extra, known, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(known)}"
                if not known:
                    # A free-form map whose values have the wrong type: the value is the problem.
                    continue
                findings.append(((*path, extra), f"unknown key {extra!r}{suggestion}", True))
            if known:
                continue
        if validator == "required":
            missing = str(error.message).split("'")[1] if "'" in str(error.message) else str(error.message)
            findings.append((path, f"missing required key {missing!r}", False))
        elif validator == "pattern" and "x-error" in schema:
            # A URL refused for the credentials it carries must not print them: validate runs in CI logs.
            instance = error.instance
            # (Only then: a refused #fragment, as in a runbook_url, is shown as written.)
            secretive = isinstance(instance, str) and "://" in instance and ("@" in instance or "?" in instance)
            shown = shown_url(instance) if secretive else instance
            findings.append((path, f"{shown!r} {schema['x-error']}", False))
        elif validator in ("minProperties", "maxProperties") and "x-error" in schema:
            findings.append((path, str(schema["x-error"]), False))
        elif validator == "enum":
            allowed = ", ".join(str(value) for value in error.validator_value)
            findings.append((path, f"must be one of: {allowed} (got {error.instance!r})", False))
        elif validator == "type":
            expected = error.validator_value
            expected_text = " or ".join(expected) if isinstance(expected, list) else expected
            findings.append(
                (
                    path,
                    f"must be {_article(expected_text)} (got {_kind(error.instance)} {error.instance!r})",
                    False,
                )
            )
        elif validator == "const" and path == ("version",):
            findings.append(
                (
                    path,
                    f"unsupported spec version {error.instance!r}: this vectorstore reads version {SUPPORTED_VERSION}",
                    False,
                )
            )
        else:
            findings.append((path, str(error.message), False))
    return findings


def _article(type_name: str) -> str:
    return ("an " if type_name[:1] in "aeiou" else "a ") + type_name


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "mapping"


def check_document(document: LoadedDocument, data: Any, filename: str) -> list[Problem]:
    """Every problem of `data` (the document with schema defaults applied), located in the document."""
    literal = checks.literal_secrets(data)
    literal_paths = {path for path, _ in literal}

    def under_literal(path: JsonPath) -> bool:
        return any(path[: len(prefix)] == prefix for prefix in literal_paths)

    located: list[tuple[JsonPath, str, bool]] = [
        finding for finding in _schema_findings(data) if not under_literal(finding[0])
    ]
    located += [(path, message, False) for path, message in literal]
    located += [(path, message, False) for path, message in checks.semantic_findings(data)]
    return _locate(document, located, filename, "error")


def warnings_of(document: LoadedDocument, data: Any, filename: str) -> list[Problem]:
    """What is valid but probably not meant (checks.ALL_WARNINGS), located like problems; at the key itself.
    Only keys the author wrote are warned about: a default filled in (`index.ef_search`) is nobody's intent."""
    findings = [(path, message, True) for path, message in checks.semantic_warnings(data)]
    return _locate(document, [item for item in findings if item[0] in document.key_positions], filename, "warning")


def _locate(
    document: LoadedDocument, located: list[tuple[JsonPath, str, bool]], filename: str, level: str
) -> list[Problem]:
    problems: set[Problem] = set()
    for path, message, at_key in located:
        position: Position = (
            document.key_positions.get(path) or document.position_of(path) if at_key else document.position_of(path)
        )
        problems.add(Problem(filename, position.line, position.column, checks.format_path(path), message, level))
    return sorted(problems)


@dataclass(frozen=True)
class CheckResult:
    spec: Spec | None
    problems: list[Problem]
    warnings: list[Problem] = field(default_factory=list)


def _explicit_ef_search(document: LoadedDocument) -> frozenset[int]:
    """Indexes of the stores that write `index.ef_search` (defaults fill it in everywhere later)."""
    return frozenset(
        path[1]
        for path in document.key_positions
        if len(path) == 4 and path[0] == "stores" and path[2:] == ("index", "ef_search") and isinstance(path[1], int)
    )


def check_bytes(raw: bytes, filename: str) -> CheckResult:
    try:
        document = load_yaml(raw)
    except YamlProblem as problem:
        return CheckResult(
            None, [Problem(filename, problem.position.line, problem.position.column, "$", problem.message)]
        )
    explicit_ef_search = _explicit_ef_search(document)
    # Defaults are filled into the loaded data itself: nothing else holds on to it.
    data = apply_defaults(document.data)
    problems = check_document(document, data, filename)
    warnings = warnings_of(document, data, filename)
    if problems:
        return CheckResult(None, problems, warnings)
    spec = build_spec(data, raw.decode("utf-8").removeprefix("\ufeff"), explicit_ef_search=explicit_ef_search)
    return CheckResult(replace(spec, warnings=tuple(str(warning) for warning in warnings)), [], warnings)


def check_file(path: str | Path) -> CheckResult:
    filename = str(path)
    try:
        with open(path, "rb") as handle:
            # Read one byte past the limit so an oversized file is reported without reading all of it.
            raw = handle.read(MAX_BYTES + 1)
    except IsADirectoryError:
        return CheckResult(None, [Problem(filename, 1, 1, "$", "is a directory, not a spec file")])
    except OSError as exc:
        return CheckResult(None, [Problem(filename, 1, 1, "$", f"cannot read: {exc.strerror or exc}")])
    return check_bytes(raw, filename)


def load_spec(path: str | Path) -> Spec:
    """The typed spec from a file, or SpecError listing every problem."""
    result = check_file(path)
    if result.spec is None:
        raise SpecError(result.problems)
    return result.spec
