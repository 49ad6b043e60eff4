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


def test_output_does_not_depend_on_libyaml(case_spec: Spec, rendered: dict[str, str]) -> None:
    """render uses libyaml's emitter when PyYAML has it; the pure-Python emitter must give the same bytes."""
    from render import litellm, manifests, yamlout

    python = yamlout.PythonDumper
    objects = manifests.documents(case_spec)
    files = {manifests.file_name(obj): yamlout.dump(obj, dumper=python) for obj in objects}
    files[manifests.KUSTOMIZATION] = yamlout.dump(manifests.kustomization(sorted(files)), dumper=python)
    files[manifests.LITELLM_FILE] = yamlout.dump(
        litellm.document(case_spec), header=litellm.header(case_spec), dumper=python
    )
    files[manifests.LITELLM_PATCH_FILE] = yamlout.dump(
        litellm.deployment_patch(case_spec), header=litellm.deployment_patch_header(case_spec), dumper=python
    )
    assert dict(sorted(files.items())) == rendered
