"""Render test cases: each spec and the directory its committed render lives in.

A case is a name: `stack` is config/stack.yaml rendered into manifests/; every tests/rendering/specs/<name>.yaml
is rendered into tests/rendering/golden/<name>/. `UPDATE_GOLDEN=1 pytest tests/rendering` rewrites them all.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from config import Spec, load_spec
from render.manifests import NOT_RESOURCES, render_files

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SPECS = HERE / "specs"
GOLDEN = HERE / "golden"
CRDS = Path(os.environ.get("VECTORSTORE_CRDS", REPO.parent / "shared" / "crds"))


def case_names() -> list[str]:
    return ["stack", *sorted(path.stem for path in SPECS.glob("*.yaml"))]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", case_names())


@pytest.fixture
def case_spec_path(case: str) -> Path:
    return REPO / "config" / "stack.yaml" if case == "stack" else SPECS / f"{case}.yaml"


@pytest.fixture
def case_dir(case: str) -> Path:
    """Where the case's render is committed."""
    return REPO / "manifests" if case == "stack" else GOLDEN / case


@pytest.fixture
def case_spec(case_spec_path: Path) -> Spec:
    return load_spec(case_spec_path)


@pytest.fixture
def rendered(case_spec: Spec) -> dict[str, str]:
    return render_files(case_spec)


@pytest.fixture
def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """The rendered Kubernetes objects, parsed back (litellm.yml, LiteLLM's Deployment patch and
    kustomization.yaml left out)."""
    out = []
    for name, text in rendered.items():
        if name in NOT_RESOURCES:
            continue
        out.append(yaml.safe_load(text))
    return out


def strict(schema: Any) -> Any:
    """The schema with additionalProperties: false on every object that lists properties (REFERENCE §5):
    CRDs accept unknown fields by default, which would let a misspelt field through."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in out and not open_ended:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@pytest.fixture(scope="session")
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> strict validator, for every served version of every CRD in CRDS."""
    validators: dict[tuple[str, str], jsonschema.Draft7Validator] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators
