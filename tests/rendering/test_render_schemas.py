"""Every rendered object against the real schemas, and the objects against each other."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from config import Spec, check_bytes, names
from render.manifests import LITELLM_PATCH_FILE, NOT_RESOURCES

KUBERNETES_VERSION = "1.37"  # the newest schemas kubernetes-validate ships
CORE_API_GROUPS = ("v1", "apps/v1", "networking.k8s.io/v1", "policy/v1")
# Every custom resource is checked against its CRD in ../shared/crds (PodMonitor and PrometheusRule included).
UNCHECKED_CRDS: set[tuple[str, str]] = set()


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = _by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_core_objects_pass_kubernetes_validate_strict(objects: list[dict[str, Any]]) -> None:
    core = [obj for obj in objects if obj["apiVersion"] in CORE_API_GROUPS]
    assert {obj["kind"] for obj in core} >= {"ConfigMap", "Deployment", "Service", "NetworkPolicy"}
    for obj in core:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field(objects: list[dict[str, Any]]) -> None:
    """The checks above can fail: a typo in a core object and in a CRD object is refused."""
    deployment = _one(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_custom_resources_pass_strict_crd_schemas(
    objects: list[dict[str, Any]], crd_validators: dict[tuple[str, str], jsonschema.Draft7Validator]
) -> None:
    custom = [obj for obj in objects if obj["apiVersion"] not in CORE_API_GROUPS]
    assert _by_kind(custom, "Cluster")
    for obj in custom:
        key = (obj["apiVersion"], obj["kind"])
        if key in UNCHECKED_CRDS:
            continue
        assert key in crd_validators, f"no served CRD schema for {key}"
        errors = [f"{list(error.absolute_path)}: {error.message}" for error in crd_validators[key].iter_errors(obj)]
        assert errors == [], f"{key} {obj['metadata']['name']}"


def test_strict_crd_schema_catches_a_misspelt_field(
    objects: list[dict[str, Any]], crd_validators: dict[tuple[str, str], jsonschema.Draft7Validator]
) -> None:
    cluster = _one(objects, "Cluster")
    bootstrap = cluster["spec"]["bootstrap"]
    bootstrap[next(iter(bootstrap))]["postInitAplicationSQL"] = ["SELECT 1"]  # initdb, or recovery on a restore
    assert not crd_validators[("postgresql.cnpg.io/v1", "Cluster")].is_valid(cluster)


def test_cluster(case_spec: Spec, objects: list[dict[str, Any]]) -> None:
    cluster = _one(objects, "Cluster")
    db = case_spec.database
    # A restored cluster recovers instead (tests/rendering/test_render_backup.py); its database and owner stay.
    initdb = cluster["spec"]["bootstrap"]["initdb" if db.restore is None else "recovery"]
    assert cluster["metadata"]["name"] == db.cluster.name
    assert cluster["spec"]["imageName"] == db.cluster.image
    assert "-standard-" in cluster["spec"]["imageName"]
    assert initdb["database"] == db.name
    assert initdb["owner"] == db.owner
    if db.restore is None:
        assert initdb["postInitApplicationSQL"] == ["CREATE EXTENSION IF NOT EXISTS vector"]
    assert ("secret" in initdb) == db.credentials_declared
    assert "enableSuperuserAccess" not in cluster["spec"]
    parameters = cluster["spec"].get("postgresql", {}).get("parameters", {})
    assert all(isinstance(value, str) for value in parameters.values())
    databases = _by_kind(objects, "Database")
    assert len(databases) == (1 if db.cluster.database_resource else 0)
    for database in databases:
        assert database["spec"]["extensions"] == [{"name": "vector", "ensure": "present"}]
        assert database["spec"]["cluster"] == {"name": db.cluster.name}


def test_secret_sources(case_spec: Spec, objects: list[dict[str, Any]]) -> None:
    kinds = {"onepassword": "OnePasswordItem", "external-secrets": "ExternalSecret"}
    expected = {(kinds[item.provider], item.name) for item in case_spec.secrets if item.provider in kinds}
    found = {(obj["kind"], obj["metadata"]["name"]) for obj in objects if obj["kind"] in kinds.values()}
    assert found == expected
    for obj in objects:
        assert obj["kind"] != "Secret", "a secret value must never be rendered"
        assert "stringData" not in obj
        assert "data" not in obj or obj["kind"] == "ConfigMap", "only the ConfigMap (the spec) carries data"
        is_db = obj["metadata"]["name"] == case_spec.database.credentials_secret
        if obj["kind"] == "OnePasswordItem":
            assert obj.get("type") == ("kubernetes.io/basic-auth" if is_db else None)
        if obj["kind"] == "ExternalSecret":
            template = obj["spec"]["target"].get("template", {})
            assert template.get("type") == ("kubernetes.io/basic-auth" if is_db else None)
            name = obj["metadata"]["name"]
            wanted = sorted(
                {ref.key for ref in case_spec.secret_refs() if ref.secret == name}
                | {key for secret, key in case_spec.object_store_secret_keys() if secret == name}
            )
            assert [item["secretKey"] for item in obj["spec"].get("data", [])] == wanted


def test_deployment_wiring(case_spec: Spec, objects: list[dict[str, Any]]) -> None:
    deployment = _one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]  # the server; git sources add git-sync sidecars after it
    assert container["name"] == "server"
    env = {item["name"]: item for item in container["env"]}
    assert len(env) == len(container["env"]), "an env var appears twice"
    assert env["PGHOST"]["value"] == f"{case_spec.database.cluster.name}-rw"
    assert env["PGPORT"]["value"] == "5432"
    assert env["PGDATABASE"]["value"] == case_spec.database.name
    refs = case_spec.secret_refs()
    git = (
        {names.GIT_CHECKOUTS_ENV}
        if any(s.kind == "git" for store in case_spec.stores for s in store.sources)
        else set()
    )
    read_replicas = {names.DATABASE_READ_URL_ENV} if case_spec.database.read_replicas else set()
    assert set(env) == {"PGHOST", "PGPORT", "PGDATABASE"} | read_replicas | {ref.env for ref in refs} | git
    if read_replicas:
        # Only the host differs from the primary's: the same port, database and credentials variables.
        assert env[names.DATABASE_READ_URL_ENV]["value"] == f"host={case_spec.database.cluster.name}-ro"
    for ref in refs:
        assert env[ref.env]["valueFrom"] == {"secretKeyRef": {"name": ref.secret, "key": ref.key}}
    assert container["command"] == ["vectorstore", "serve", "--spec", names.SPEC_MOUNT_PATH, "--host", "0.0.0.0"]  # noqa: S104
    assert container["ports"][0]["containerPort"] == case_spec.server.port
    assert container["livenessProbe"]["httpGet"]["path"] == names.HEALTH_PATH
    assert container["readinessProbe"]["httpGet"]["path"] == names.READY_PATH
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_deployment_hardening(objects: list[dict[str, Any]]) -> None:
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10001
    assert pod["securityContext"]["runAsGroup"] >= 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for each in pod["containers"]:  # the server and every git-sync sidecar alike
        context = each["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["runAsNonRoot"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert each["resources"]["requests"] and each["resources"]["limits"]["memory"]
        assert each["livenessProbe"] and each["readinessProbe"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_spec_reaches_the_server_unchanged(case_spec_path: Any, case_spec: Spec, objects: list[dict[str, Any]]) -> None:
    """The ConfigMap holds the spec file byte for byte, the server reads it back as the same spec, and the
    pod template's checksum is that of the ConfigMap data, so editing the spec rolls the pods."""
    config_map = next(obj for obj in _by_kind(objects, "ConfigMap") if obj["metadata"]["name"].endswith("-spec"))
    text = config_map["data"][names.SPEC_FILE_NAME]
    assert text == case_spec_path.read_bytes().decode("utf-8")
    reread = check_bytes(text.encode("utf-8"), "configmap")
    assert reread.problems == [] and reread.spec == case_spec
    deployment = _one(objects, "Deployment")
    canonical = json.dumps(config_map["data"], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    annotation = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert annotation == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    pod = deployment["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "spec")
    assert mount["mountPath"] == names.SPEC_MOUNT_DIR
    volume = next(v for v in pod["volumes"] if v["name"] == "spec")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]


def test_selectors_use_only_immutable_labels(objects: list[dict[str, Any]]) -> None:
    deployment = _one(objects, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "vectorstore-render"
    assert _one(objects, "Service")["spec"]["selector"] == selector
    assert _one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == selector
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        for obj in _by_kind(objects, kind):
            assert obj["spec"]["selector"]["matchLabels"] == selector


def test_network_policy_admits_only_litellm(case_spec: Spec, objects: list[dict[str, Any]]) -> None:
    policy = _one(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == case_spec.litellm.pod_selector
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": case_spec.litellm.namespace}
    assert rule["ports"] == [{"protocol": "TCP", "port": case_spec.server.port}]


def test_optional_objects(case_spec: Spec, objects: list[dict[str, Any]]) -> None:
    assert len(_by_kind(objects, "PodDisruptionBudget")) == (1 if case_spec.server.replicas > 1 else 0)
    monitors = _by_kind(objects, "PodMonitor")
    assert len(monitors) == (1 if case_spec.server.pod_monitor else 0)
    for monitor in monitors:
        # Its CRD passes any port name: the one the container declares is the one to scrape.
        assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
        assert set(monitor["spec"]) == {"selector", "podMetricsEndpoints"}
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        container = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        assert endpoint == {"port": container["ports"][0]["name"], "path": names.METRICS_PATH}
    rules = _by_kind(objects, "PrometheusRule")
    assert len(rules) == (1 if case_spec.server.prometheus_rule else 0)
    for rule in rules:
        (group,) = rule["spec"]["groups"]
        assert group["rules"] and all(item["labels"]["severity"] for item in group["rules"])
    dashboards = [obj for obj in _by_kind(objects, "ConfigMap") if obj["metadata"]["name"].endswith("-dashboard")]
    assert len(dashboards) == (1 if case_spec.server.grafana_dashboard else 0)
    for dashboard in dashboards:
        labels = dashboard["metadata"]["labels"]
        assert labels.items() >= case_spec.server.grafana_dashboard_labels.items()
        assert json.loads(dashboard["data"]["vectorstore.json"])["panels"]


def test_strict_crd_schema_catches_a_misspelt_rule_field(
    objects: list[dict[str, Any]], crd_validators: dict[tuple[str, str], jsonschema.Draft7Validator]
) -> None:
    for rule in _by_kind(objects, "PrometheusRule"):
        validator = crd_validators[("monitoring.coreos.com/v1", "PrometheusRule")]
        assert validator.is_valid(rule)
        rule["spec"]["groups"][0]["rules"][0]["anotations"] = {}
        assert not validator.is_valid(rule)


def test_litellm_snippet(case_spec: Spec, rendered: dict[str, str]) -> None:
    snippet = yaml.safe_load(rendered["litellm.yml"])
    entries = snippet["vector_store_registry"]
    registered = [store for store in case_spec.stores if store.registry is not None]
    assert len(entries) == len(registered)
    for entry, store in zip(entries, registered, strict=True):
        assert store.registry is not None
        assert entry["vector_store_name"] == store.registry.name
        params = entry["litellm_params"]
        assert params["vector_store_id"] == store.id
        assert params["custom_llm_provider"] == case_spec.litellm.provider
        # pg_vector appends /v1/vector_stores itself; openai appends only /vector_stores and /files.
        if case_spec.litellm.provider == "openai":
            assert params["api_base"] == case_spec.litellm.api_base + "/v1"
        else:
            assert params["api_base"] == case_spec.litellm.api_base
            assert not params["api_base"].endswith("/v1")
        assert params["api_key"] == f"os.environ/{case_spec.litellm.api_key_env}"
        assert params.get("vector_store_description") == store.registry.description
        for key, value in store.registry.search_overrides.items():
            assert params[key] == value
    _check_files_route(case_spec, snippet)


def _check_files_route(spec: Spec, snippet: dict[str, Any]) -> None:
    """With openai: one model entry for files (unless turned off), `files_settings` only when asked; with
    pg_vector, neither (LiteLLM couldn't attach what it uploaded)."""
    target = {"api_base": spec.litellm.api_base + "/v1", "api_key": f"os.environ/{spec.litellm.api_key_env}"}
    expected_keys = {"vector_store_registry"}
    if spec.litellm.provider == "openai" and spec.litellm.files_model is not None:
        expected_keys.add("model_list")
        assert snippet["model_list"] == [
            {
                "model_name": spec.litellm.files_model,
                "litellm_params": {"model": f"openai/{spec.litellm.files_model}", **target},
            }
        ]
    if spec.litellm.provider == "openai" and spec.litellm.files_settings:
        expected_keys.add("files_settings")
        assert snippet["files_settings"] == [{"custom_llm_provider": "openai", **target}]
    assert set(snippet) == expected_keys


def test_litellm_deployment_patch(case_spec: Spec, rendered: dict[str, str]) -> None:
    """A strategic-merge patch for LiteLLM's Deployment: only the env var litellm.yml's api_key names, from the
    Secret key of the auth key LiteLLM sends (the one the server reads as VECTORSTORE_API_KEY_<NAME>)."""
    text = rendered[LITELLM_PATCH_FILE]
    if case_spec.litellm.provider == "pg_vector":
        assert "PG_VECTOR_API_KEY" in text, "the header names the error LiteLLM gives without it"
    else:
        assert "OPENAI_API_KEY" in text, "the header says why the key must be present"
    patch = yaml.safe_load(text)
    assert (patch["apiVersion"], patch["kind"]) == ("apps/v1", "Deployment")
    assert patch["metadata"] == {"name": case_spec.litellm.deployment_name, "namespace": case_spec.litellm.namespace}
    assert set(patch) == {"apiVersion", "kind", "metadata", "spec"}
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    key = case_spec.litellm_key
    assert container == {
        "name": case_spec.litellm.deployment_container,
        "env": [
            {
                "name": case_spec.litellm.api_key_env,
                # optional: false: LiteLLM's pod must not start without it (openai would fall back to
                # OPENAI_API_KEY and send it to the server).
                "valueFrom": {"secretKeyRef": {"name": key.api_key.secret, "key": key.api_key.key, "optional": False}},
            }
        ],
    }
    # The server reads the very same Secret key.
    deployment = next(obj for obj in _objects(rendered) if obj["kind"] == "Deployment")
    server_env = {env["name"]: env for env in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    server_ref = server_env[key.api_key.env]["valueFrom"]["secretKeyRef"]
    litellm_ref = container["env"][0]["valueFrom"]["secretKeyRef"]
    assert (server_ref["name"], server_ref["key"]) == (litellm_ref["name"], litellm_ref["key"])


def _objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [yaml.safe_load(text) for name, text in rendered.items() if name not in NOT_RESOURCES]


def test_litellm_snippet_recommends_the_error_failure_mode(rendered: dict[str, str]) -> None:
    text = rendered["litellm.yml"]
    assert "#   vector_store_search_failure_mode: error" in text and "# litellm_settings:" in text
    assert "override" in text


def test_kustomization_lists_every_object(rendered: dict[str, str]) -> None:
    kustomization = yaml.safe_load(rendered["kustomization.yaml"])
    assert kustomization["resources"] == sorted(set(rendered) - NOT_RESOURCES)


def test_the_cases_cover_every_kind_render_can_emit() -> None:
    """So every check above runs at least once on each kind, including the optional ones."""
    root = Path(__file__).resolve().parent
    kinds = set()
    for path in [*(root.parent.parent / "manifests").glob("*.yaml"), *(root / "golden").glob("*/*.yaml")]:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        if path.name not in NOT_RESOURCES:
            kinds.add(document["kind"])
    assert kinds == {
        "Cluster",
        "Database",
        "OnePasswordItem",
        "ExternalSecret",
        "ConfigMap",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PodMonitor",
        "PrometheusRule",
        "ObjectStore",
        "ScheduledBackup",
    }
