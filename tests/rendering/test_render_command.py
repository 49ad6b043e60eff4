"""`vectorstore render` / `render-manifests`: errors, --check, and never a half-written directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main
from config import check_file
from render.command import render_command
from render.output import OutputError, write

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STACK = REPO / "config" / "stack.yaml"
MULTI = HERE / "specs" / "multi-store.yaml"
ONEPASSWORD = HERE / "specs" / "onepassword.yaml"

INVALID_SPEC = """\
version: 1
namespace: Not_A_Label
database:
  cluster: {name: pg}
auth:
  keys:
    - {name: app, api_key: sk-literal-value, scope: write}
embedding: {base_url: "http://litellm:4000", model: m, dimensions: 8}
stores:
  - {name: a, distnce: cosine}
"""


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_bad_spec_prints_every_problem_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(INVALID_SPEC, encoding="utf-8")
    output = tmp_path / "out"
    assert main(["render", str(spec), "-o", str(output)]) == 1
    err = capsys.readouterr().err.splitlines()
    problems = [str(problem) for problem in check_file(spec).problems]
    assert len(problems) >= 3
    assert err[: len(problems)] == problems
    assert all(line.startswith(f"{spec}:") for line in problems)
    assert "nothing written" in err[-1]
    assert not output.exists()


def test_bad_spec_leaves_an_earlier_render_alone(tmp_path: Path) -> None:
    output = tmp_path / "out"
    assert render_command(STACK, output, check=False) == 0
    before = _tree(output)
    spec = tmp_path / "bad.yaml"
    spec.write_text(INVALID_SPEC, encoding="utf-8")
    assert render_command(spec, output, check=False) == 1
    assert _tree(output) == before


def test_missing_spec_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render_command(tmp_path / "nope.yaml", tmp_path / "out", check=False) == 1
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_check_passes_on_a_fresh_render_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    assert render_command(MULTI, output, check=False) == 0
    before = _tree(output)
    capsys.readouterr()
    assert render_command(MULTI, output, check=True) == 0
    assert capsys.readouterr().out == ""
    assert _tree(output) == before


def test_check_shows_changed_extra_and_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    assert render_command(STACK, output, check=False) == 0
    deployment = output / "deployment-vector-store.yaml"
    deployment.write_text(deployment.read_text().replace("replicas: 1", "replicas: 2"))
    (output / "service-vector-store.yaml").unlink()
    (output / "secret-leftover.yaml").write_text("kind: Secret\n")
    (output / "nested").mkdir()
    (output / "nested" / "stray.txt").write_text("stray\n")
    before = _tree(output)
    capsys.readouterr()

    assert render_command(STACK, output, check=True) == 1
    out = capsys.readouterr()
    assert f"--- {deployment}\n+++ {deployment}\n" in out.out
    assert "-  replicas: 2\n+  replicas: 1\n" in out.out
    assert f"--- /dev/null\n+++ {output / 'service-vector-store.yaml'}\n" in out.out
    assert f"--- {output / 'secret-leftover.yaml'}\n+++ /dev/null\n" in out.out
    assert "-kind: Secret\n" in out.out
    assert f"--- {output / 'nested' / 'stray.txt'}\n+++ /dev/null\n" in out.out
    assert "out of date" in out.err
    assert _tree(output) == before, "--check must not write"


def test_check_against_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "never-rendered"
    assert render_command(STACK, output, check=True) == 1
    assert f"+++ {output / 'kustomization.yaml'}" in capsys.readouterr().out
    assert not output.exists()


def test_render_replaces_a_stale_render_whole(tmp_path: Path) -> None:
    output = tmp_path / "out"
    assert render_command(ONEPASSWORD, output, check=False) == 0
    assert (output / "onepassworditem-vector-store-db.yaml").exists()
    assert render_command(MULTI, output, check=False) == 0
    assert render_command(MULTI, output, check=True) == 0, "files from the first spec must be gone"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no staging directory left behind"


def test_render_refuses_a_directory_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "checkout"
    output.mkdir()
    (output / "README.md").write_text("mine\n")
    assert render_command(STACK, output, check=False) == 1
    assert "not an earlier render" in capsys.readouterr().err
    assert _tree(output) == {"README.md": b"mine\n"}


def test_unwritable_output_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert render_command(STACK, blocker / "out", check=False) == 1
    assert "render:" in capsys.readouterr().err
    assert render_command(STACK, blocker, check=False) == 1
    assert "not a directory" in capsys.readouterr().err


def test_failed_write_keeps_the_earlier_render(tmp_path: Path) -> None:
    """A write that fails part-way (here a file name whose directory does not exist) changes nothing."""
    output = tmp_path / "out"
    assert render_command(STACK, output, check=False) == 0
    before = _tree(output)
    with pytest.raises(OutputError):
        write(output, {"a.yaml": "a: 1\n", "missing-dir/b.yaml": "b: 2\n"})
    assert _tree(output) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_console_scripts_render_the_same_bytes_in_any_process(tmp_path: Path) -> None:
    """`render-manifests` and `vectorstore render` as installed; different hash seeds give identical bytes."""
    scripts = Path(sys.executable).parent
    outputs = []
    for seed, command in (("1", ["render-manifests"]), ("2", ["vectorstore", "render"])):
        output = tmp_path / f"out-{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [str(scripts / command[0]), *command[1:], str(MULTI), "-o", str(output)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        outputs.append(_tree(output))
    assert outputs[0] == outputs[1]
    check = subprocess.run(
        [str(scripts / "render-manifests"), str(MULTI), "-o", str(tmp_path / "out-1"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_render_into_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-o .` from inside an earlier render replaces it; from inside anything else it is refused."""
    output = tmp_path / "out"
    assert render_command(ONEPASSWORD, output, check=False) == 0
    monkeypatch.chdir(output)
    assert render_command(MULTI, Path("."), check=False) == 0
    assert render_command(MULTI, output, check=True) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    monkeypatch.chdir(tmp_path)
    assert render_command(MULTI, Path("."), check=False) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
