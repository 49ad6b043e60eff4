"""The spec validator, driven by example folders the suite discovers on its own.

tests/specs/valid/*.yaml must pass. Each tests/specs/invalid/*.yaml ends with `# expect: LINE:COL $.path: message`
lines; the validator must report exactly those problems (message compared as a prefix), no more. Each
tests/specs/warnings/*.yaml is valid and has `# warn: LINE:COL $.path: message` lines: exactly those warnings.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from config import check_file, load_spec, names
from config import checks as semantic
from config.spec import apply_defaults, check_bytes
from config.yamlsafe import YamlProblem, load_yaml

HERE = Path(__file__).parent
REPO = HERE.parent
VALID = sorted((HERE / "specs" / "valid").glob("*.yaml"))
INVALID = sorted((HERE / "specs" / "invalid").glob("*.yaml"))
WARNINGS = sorted((HERE / "specs" / "warnings").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (?P<line>\d+):(?P<column>\d+) (?P<path>\$\S*): (?P<message>.+)$", re.M)
WARN = re.compile(r"^# warn: (?P<line>\d+):(?P<column>\d+) (?P<path>\$\S*): (?P<message>.+)$", re.M)


def test_example_folders_are_populated() -> None:
    assert len(VALID) >= 3 and len(INVALID) >= 25


@pytest.mark.parametrize(
    "path", [*VALID, REPO / "config" / "stack.yaml", REPO / "config" / "local.yaml"], ids=lambda p: p.name
)
def test_valid_specs_pass(path: Path) -> None:
    result = check_file(path)
    assert result.problems == []
    assert result.spec is not None


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_specs_report_exactly_the_expected_problems(path: Path) -> None:
    expected = [match.groupdict() for match in EXPECT.finditer(path.read_text())]
    assert expected, f"{path.name} has no `# expect:` lines"
    problems = check_file(path).problems
    assert len(problems) == len(expected), "\n".join(map(str, problems))
    for want in expected:
        assert any(
            problem.file == str(path)
            and problem.line == int(want["line"])
            and problem.column == int(want["column"])
            and problem.path == want["path"]
            and problem.message.startswith(want["message"])
            for problem in problems
        ), f"missing {want}; got:\n" + "\n".join(map(str, problems))


# The password of a `scheme://user:password@host` URL in an example.
URL_PASSWORD = re.compile(r"[a-z0-9+.-]+://[^\s/@:\"']+:([^\s/@\"']+)@")


def test_a_refused_url_never_has_its_password_quoted() -> None:
    """validate's output lands in CI logs: a URL refused for its credentials is named by its JSON path and shown
    (if at all) without them: in every example that has one, through the API and through the CLI."""
    examples = {path: URL_PASSWORD.findall(path.read_text()) for path in INVALID}
    examples = {path: passwords for path, passwords in examples.items() if passwords}
    assert len(examples) >= 6
    for path, passwords in examples.items():
        shown = "\n".join(str(problem) for problem in check_file(path).problems)
        assert shown and not any(password in shown for password in passwords), path.name
    result = _cli("validate", *map(str, examples))
    assert result.returncode == 1 and result.stdout + result.stderr
    every = [password for passwords in examples.values() for password in passwords]
    assert not any(password in result.stdout + result.stderr for password in every)


@pytest.mark.parametrize("path", WARNINGS, ids=lambda p: p.stem)
def test_warning_specs_are_valid_and_warn_exactly_as_expected(path: Path) -> None:
    expected = [match.groupdict() for match in WARN.finditer(path.read_text())]
    assert expected, f"{path.name} has no `# warn:` lines"
    result = check_file(path)
    assert result.problems == [] and result.spec is not None
    assert len(result.warnings) == len(expected), "\n".join(map(str, result.warnings))
    for want in expected:
        assert any(
            (warning.line, warning.column, warning.path) == (int(want["line"]), int(want["column"]), want["path"])
            and warning.level == "warning"
            and warning.message.startswith(want["message"])
            for warning in result.warnings
        ), f"missing {want}; got:\n" + "\n".join(map(str, result.warnings))
    # The typed spec carries them, printed as `vectorstore validate` prints them.
    assert list(result.spec.warnings) == [str(warning) for warning in result.warnings]
    assert all(": warning: " in text for text in result.spec.warnings)


def test_validate_prints_warnings_and_exits_0() -> None:
    run = subprocess.run(
        [sys.executable, "-c", "import sys, cli; sys.exit(cli.main(sys.argv[1:]))", "validate", *map(str, WARNINGS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == sum(len(WARN.findall(path.read_text())) for path in WARNINGS)
    assert all(re.match(r"^\S+:\d+:\d+: \$\S*: warning: ", line) for line in lines), lines


def test_every_warning_has_an_example() -> None:
    fired = set()
    for path in WARNINGS:
        data = apply_defaults(copy.deepcopy(load_yaml(path.read_bytes()).data))
        fired |= {check.__name__ for check in semantic.ALL_WARNINGS if check(data)}
    assert fired == {check.__name__ for check in semantic.ALL_WARNINGS}


def test_the_old_search_defaults_render_like_search_overrides() -> None:
    old = load_spec(HERE / "specs" / "warnings" / "deprecated-search-defaults.yaml")
    assert old.litellm.search_overrides == {"max_num_results": 5}
    docs, notes = old.stores
    assert docs.registry is not None and docs.registry.search_overrides == {"max_num_results": 3}
    assert notes.registry is not None and notes.registry.search_overrides == {"max_num_results": 5}


def test_every_semantic_check_has_a_negative_example() -> None:
    fired: set[str] = set()
    for path in INVALID:
        try:
            document = load_yaml(path.read_bytes())
        except Exception:  # noqa: S112 - YAML-level cases exercise the loader, not the checks
            continue
        data = apply_defaults(copy.deepcopy(document.data))
        for check in (*semantic.ALL_CHECKS, semantic.literal_secrets):
            if check(data):
                fired.add(check.__name__)
    missing = {check.__name__ for check in (*semantic.ALL_CHECKS, semantic.literal_secrets)} - fired
    assert not missing, f"semantic checks with no negative example: {missing}"


def test_example_stack_declares_the_reference_deployment() -> None:
    spec = load_spec(REPO / "config" / "stack.yaml")
    assert spec.namespace == "litellm"
    assert spec.database.cluster.name == "vector-store-postgres"
    assert (spec.database.name, spec.database.owner) == ("vectorstore", "litellm")
    assert {ref.secret for ref in spec.secret_refs()} == {"litellm-secrets"}
    assert {ref.key for ref in spec.secret_refs()} == {"username", "password", "vector-store-api-key", "master-key"}
    assert (spec.embedding.model, spec.embedding.dimensions) == ("openai/nomic-embed-text", 768)
    assert spec.embedding.base_url == "http://litellm.litellm.svc.cluster.local:4000"
    (store,) = spec.stores
    assert (store.name, store.id) == ("litellm-vector-store", "09beee6f-ed62-47c6-a161-dea9018a5a40")
    assert store.registry is not None and store.registry.name == "pgvector-litellm"
    assert spec.service_url == "http://vector-store.litellm.svc.cluster.local:8000"


def test_derived_ids_are_stable_uuid5_of_the_name() -> None:
    spec = load_spec(HERE / "specs" / "valid" / "multi-store.yaml")
    handbook = spec.store_by_name("handbook")
    assert handbook is not None and not handbook.id_declared
    # The namespace is documented and fixed: this literal must never change.
    assert handbook.id == str(uuid.uuid5(uuid.UUID("037f31bf-dfba-546d-8650-6483a89a4efe"), "handbook"))
    assert uuid.uuid5(uuid.NAMESPACE_DNS, "stores.vectorstore.dev") == names.STORE_ID_NAMESPACE
    assert load_spec(HERE / "specs" / "valid" / "multi-store.yaml").stores == spec.stores


def test_derived_names_are_shared() -> None:
    spec = load_spec(HERE / "specs" / "valid" / "multi-store.yaml")
    envs = {ref.env for ref in spec.secret_refs()}
    assert envs == {
        "PGUSER",
        "PGPASSWORD",
        "VECTORSTORE_EMBEDDING_API_KEY",
        "VECTORSTORE_API_KEY_LITELLM",
        "VECTORSTORE_API_KEY_INGEST",
    }
    runbooks = spec.store_by_name("runbooks: ops")
    assert runbooks is not None
    assert (runbooks.model, runbooks.dimensions, runbooks.vector_type) == ("nomic-embed-text", 768, "vector")
    handbook = spec.store_by_name("handbook")
    assert handbook is not None and handbook.vector_type == "halfvec"  # 3,072 dimensions
    assert handbook.registry is not None and handbook.registry.search_overrides == {"max_num_results": 3}
    assert spec.database.cluster.parameters == {"jit": "off", "max_connections": "200", "shared_buffers": "512MB"}
    assert spec.embedding.base_url == "https://litellm.example.com"


def test_minimal_spec_defaults_to_cnpg_generated_secret() -> None:
    spec = load_spec(HERE / "specs" / "valid" / "minimal.yaml")
    assert spec.database.credentials_secret == "pg-app" and not spec.database.credentials_declared
    assert spec.server.port == 8000 and spec.server.replicas == 1 and spec.prune is False


def test_yaml_1_1_booleans_stay_strings() -> None:
    spec = load_spec(HERE / "specs" / "valid" / "multi-store.yaml")
    runbooks = spec.store_by_name("runbooks: ops")
    handbook = spec.store_by_name("handbook")
    assert runbooks is not None and runbooks.description == "no"
    assert handbook is not None and handbook.metadata["yes"] == "no"


BASE = (HERE / "specs" / "valid" / "minimal.yaml").read_bytes()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x01\x02binary", "binary data (NUL byte)"),
        (b"version: 1\nnamespace: \xff\xfe\n", "not valid UTF-8"),
        (b"version: 1\nnamespace: \x07bell\n", "YAML syntax error"),
        (b"a: " + b"[" * 5000 + b"]" * 5000, "nested more than 64 levels deep"),
        (b"a:\n" + b"".join(b"  " * i + b"k:\n" for i in range(1, 500)), "nested more than 64 levels deep"),
        (b"a: '" + b"x" * (2 * 1024 * 1024) + b"'\n", "a spec may be at most 1,048,576 bytes"),
        (b"a: &a [*a]\n", "nested more than 64 levels deep (through aliases)"),
        (b"!!merge <<: {version: 1}\n", "merge keys (<<) are not supported"),
        (b"? [a, b]\n: 1\n", "mapping keys must be plain strings"),
        (b"version: .inf\n", "infinities and NaN are not allowed"),
    ],
    ids=[
        "binary",
        "utf8",
        "control-char",
        "deep-flow",
        "deep-block",
        "huge",
        "recursive-alias",
        "merge",
        "complex-key",
        "inf",
    ],
)
def test_hostile_yaml_gets_a_located_message(raw: bytes, message: str) -> None:
    problems = check_bytes(raw, "x.yaml").problems
    assert len(problems) == 1 and message in problems[0].message, problems
    assert problems[0].line >= 1 and problems[0].column >= 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_validate_cli_exit_codes_and_format(tmp_path: Path) -> None:
    ok = _cli("validate", "config/stack.yaml", str(VALID[0]))
    assert ok.returncode == 0 and ok.stderr == ""
    bad = _cli("validate", "config/stack.yaml", str(HERE / "specs" / "invalid" / "literal-secret.yaml"))
    assert bad.returncode == 1
    lines = [line for line in bad.stderr.splitlines() if line.startswith(str(HERE))]
    assert len(lines) == 2
    assert all(re.match(r"^.+:\d+:\d+: \$\.\S+: .+$", line) for line in lines)
    assert "Traceback" not in bad.stderr
    missing = _cli("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    directory = _cli("validate", str(tmp_path))
    assert directory.returncode == 1 and "is a directory" in directory.stderr
    usage = _cli("validate")
    assert usage.returncode == 2 and "usage:" in usage.stderr
    unknown = _cli("frobnicate")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr


def test_schema_cli_prints_the_shipped_schema() -> None:
    result = _cli("schema")
    assert result.returncode == 0
    assert result.stdout == (REPO / "config" / "schema.json").read_text()
    assert '"$schema": "https://json-schema.org/draft/2020-12/schema"' in result.stdout


def test_serve_workers_flag_and_spec_field_share_their_bound() -> None:
    import json

    from cli import parse
    from config.model import MAX_SERVER_WORKERS

    schema = json.loads((REPO / "config" / "schema.json").read_text())
    assert schema["properties"]["server"]["properties"]["workers"]["maximum"] == MAX_SERVER_WORKERS
    assert parse(["serve", "--workers", str(MAX_SERVER_WORKERS)]).workers == MAX_SERVER_WORKERS  # type: ignore[union-attr]
    for bad in ("0", str(MAX_SERVER_WORKERS + 1), "two"):
        result = _cli("serve", "--workers", bad)
        assert result.returncode == 2 and "--workers" in result.stderr


def _schema_fields(node: dict[str, object], prefix: str, defs: dict[str, dict[str, object]]) -> set[str]:
    while "$ref" in node:
        node = {**defs[str(node["$ref"]).split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    fields: set[str] = set()
    properties = node.get("properties")
    if isinstance(properties, dict):
        for key, sub in properties.items():
            path = f"{prefix}.{key}" if prefix else key
            fields.add(path)
            fields |= _schema_fields(sub, path, defs)
    items = node.get("items")
    if isinstance(items, dict):
        fields |= _schema_fields(items, f"{prefix}[]", defs)
    return fields


def test_every_spec_field_is_documented() -> None:
    import json

    schema = json.loads((REPO / "config" / "schema.json").read_text())
    fields = _schema_fields(schema, "", schema["$defs"])
    doc = (REPO / "docs" / "spec.md").read_text()
    undocumented = sorted(field for field in fields if f"`{field}`" not in doc)
    assert not undocumented, f"fields missing from docs/spec.md: {undocumented}"


def test_field_reference_is_current() -> None:
    from config.docs import DOC, updated_doc

    text = DOC.read_text(encoding="utf-8")
    assert updated_doc(text) == text, "docs/spec.md is stale: run `python -m config.docs --write`"


@pytest.mark.parametrize("path", [*VALID, *INVALID, REPO / "config" / "stack.yaml"], ids=lambda p: p.name)
def test_fast_and_detailed_schema_validators_agree(path: Path) -> None:
    from config.spec import _validator, schema_valid

    try:
        data = apply_defaults(load_yaml(path.read_bytes()).data)
    except YamlProblem:  # YAML-level cases never reach the schema
        return
    detailed_valid = not any(True for _ in _validator().iter_errors(data))
    assert schema_valid(data) == detailed_valid


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("512Mi", 512 * 2**20), ("1Gi", 2**30), ("1.5Gi", 1.5 * 2**30), ("1G", 1e9), ("300", 300.0), ("2k", 2000.0)],
)
def test_memory_quantities_in_bytes(quantity: str, expected: float) -> None:
    assert semantic.quantity_bytes(quantity) == expected


@pytest.mark.parametrize("quantity", ["", "Mi", "1.5.2Gi", "12 Mi", "1Xi", None, 512])
def test_what_is_not_a_memory_quantity(quantity: object) -> None:
    assert semantic.quantity_bytes(quantity) is None


@pytest.mark.parametrize(
    ("server", "warns"),
    [
        ({}, False),  # the defaults: 192 MiB of caches in a 1 GiB pod
        ({"workers": 2}, False),  # 384 MiB of 1 GiB
        ({"workers": 3}, True),  # 576 MiB of 1 GiB
        ({"resources": {"limits": {"memory": "300Mi"}}}, True),  # 192 MiB of 300
        ({"resources": {"requests": {"memory": "256Mi"}}}, False),  # no limit written: nothing to compare with
        ({"workers": 3, "postings_cache_bytes": 0}, False),  # the postings cache off: 192 MiB of 1 GiB
    ],
)
def test_caches_are_compared_with_the_memory_limit(server: dict[str, object], warns: bool) -> None:
    # As the checks see a spec: with the schema's defaults filled in.
    findings = semantic.caches_over_memory_limit(apply_defaults({"server": server, "embedding": {}}))
    assert bool(findings) == warns, findings
