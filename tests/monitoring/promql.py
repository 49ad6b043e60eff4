"""promtool (Debian package `prometheus`) from the tests: check rules, run rule unit tests, and the metric names a
PromQL expression reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

# Series Prometheus makes itself (the scrape's health), not the server: they can't be on its /metrics.
SYNTHETIC_METRICS = frozenset({"up"})
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NOT_METRICS = frozenset(
    {
        "sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right",
        "rate", "increase", "deriv", "delta", "irate", "absent", "time", "histogram_quantile", "or", "and",
        "unless", "bool", "offset", "le", "topk", "bottomk", "clamp_min", "clamp_max",
    }
)  # fmt: skip


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (.ci/run does)"
    return found


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def write_rules(path: Path, groups: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    return path


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers outside label matchers, strings and ranges that are
    no function, keyword or aggregation."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values) out first
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)  # then label matchers
    stripped = re.sub(r"\[[^\]]*\]", "[]", stripped)  # and ranges/subqueries
    names = set()
    for match in _IDENTIFIER.finditer(stripped):
        word = match.group(0)
        before = stripped[: match.start()].rstrip()
        # Label names in by (...) / without (...) clauses are no metrics.
        if re.search(r"\b(by|without|on|ignoring)\s*\([^)]*$", before):
            continue
        if word in _NOT_METRICS or re.fullmatch(r"\d.*", word):
            continue
        names.add(word)
    return names
