"""checkov on every committed render: no failed check, and each per-resource skip hides exactly its own check.

checkov pins heavy dependencies, so it lives in its own venv: `.venv-checkov` in the checkout (CI builds it,
see .ci/run) or beside it, or the path in VECTORSTORE_CHECKOV. When VECTORSTORE_CHECKOV is set the binary
must exist: CI sets it, so there this test can fail but never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from render.manifests import LITELLM_PATCH_FILE

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _checkov() -> Path | None:
    configured = os.environ.get("VECTORSTORE_CHECKOV")
    if configured:
        return Path(configured)
    for venv in (REPO / ".venv-checkov", REPO.parent / ".venv-checkov"):
        if (venv / "bin" / "checkov").exists():
            return venv / "bin" / "checkov"
    return None


def _committed_renders(into: Path) -> Path:
    """Copies of manifests/ and every golden case, one subdirectory each (their namespaces differ, so
    checkov's resource ids don't collide)."""
    shutil.copytree(REPO / "manifests", into / "stack")
    for case in sorted((HERE / "golden").iterdir()):
        shutil.copytree(case, into / case.name)
    # The patch for LiteLLM's own Deployment is a fragment of someone else's object, not one of ours: checkov
    # would judge LiteLLM's pod by the one env entry it adds.
    for patch in into.rglob(LITELLM_PATCH_FILE):
        patch.unlink()
    return into


def _run(checkov: Path, directory: Path) -> dict[str, Any]:
    run = subprocess.run(
        # --skip-download: no network; checkov would otherwise fetch its guideline links.
        [str(checkov), "-d", str(directory), "--framework", "kubernetes", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.stdout.strip(), run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    assert report["check_type"] == "kubernetes"
    return report


def _skipped_ids(directory: Path) -> dict[str, set[str]]:
    """Deployment file -> the check ids its checkov.io/skip annotations name."""
    out: dict[str, set[str]] = {}
    for path in sorted(directory.rglob("deployment-*.yaml")):
        annotations = yaml.safe_load(path.read_text())["metadata"].get("annotations", {})
        out[path.relative_to(directory).as_posix()] = {
            value.split("=", 1)[0] for key, value in annotations.items() if re.fullmatch(r"checkov\.io/skip\d+", key)
        }
    return out


@pytest.fixture(scope="module")
def checkov() -> Path:
    binary = _checkov()
    if binary is None:
        pytest.skip("checkov is not installed: python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov")
    assert binary.exists(), f"VECTORSTORE_CHECKOV={binary} does not exist"
    return binary


def test_no_failed_checks_and_every_skip_is_needed(checkov: Path, tmp_path: Path) -> None:
    renders = _committed_renders(tmp_path / "renders")
    report = _run(checkov, renders)
    failed = [(item["check_id"], item["file_path"]) for item in report["results"].get("failed_checks", [])]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["resource_count"] >= 5 * 4, "checkov did not see every case"

    # Drop the annotations: exactly the skipped checks must now fail, nothing else.
    skipped = _skipped_ids(renders)
    assert all("CKV_K8S_35" in ids for ids in skipped.values())
    for path in renders.rglob("deployment-*.yaml"):
        text = path.read_text()
        path.write_text(re.sub(r"(?m)^    checkov\.io/skip\d+: .*\n", "", text))
    bare = _run(checkov, renders)
    now_failing: dict[str, set[str]] = {}
    for item in bare["results"].get("failed_checks", []):
        now_failing.setdefault(item["file_path"].lstrip("/"), set()).add(item["check_id"])
    assert now_failing == {name: ids for name, ids in skipped.items() if ids}
