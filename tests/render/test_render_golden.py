"""Golden files: each case's committed directory is exactly what its spec renders today."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config import Spec
from render.command import render_command
from render.output import diff, write

UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def test_committed_render_is_current(case: str, case_spec_path: Path, case_dir: Path, rendered: dict[str, str]) -> None:
    if UPDATE:
        write(case_dir, rendered)
    changes = diff(case_dir, rendered)
    assert changes == "", f"{case_dir} is stale; run UPDATE_GOLDEN=1 pytest tests/render\n{changes}"


def test_manifests_pass_render_check(capsys: pytest.CaptureFixture[str]) -> None:
    """What CI runs: `render-manifests config/stack.yaml --check` against the committed manifests/."""
    repo = Path(__file__).resolve().parents[2]
    assert render_command(repo / "config" / "stack.yaml", repo / "manifests", check=True) == 0
    assert capsys.readouterr().out == ""


def test_render_is_deterministic(case_spec: Spec, rendered: dict[str, str]) -> None:
    from render.manifests import render_files

    assert render_files(case_spec) == rendered
