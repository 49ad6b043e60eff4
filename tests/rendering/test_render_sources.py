"""What `stores[].sources` adds to the Deployment: read-only source volumes, git-sync sidecars, S3 credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from config import load_spec, names
from config.model import GitSource, PathSource, S3Source
from render.manifests import render_files

SPEC = Path(__file__).resolve().parent / "specs" / "sources.yaml"


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    rendered = render_files(load_spec(SPEC))
    deployment = yaml.safe_load(rendered["deployment-kb.yaml"])
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def test_path_sources_mount_what_the_spec_declares_read_only(pod: dict[str, Any]) -> None:
    spec = load_spec(SPEC)
    server = pod["containers"][0]
    mounts = {mount["mountPath"]: mount for mount in server["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    kinds = {"pvc": "persistentVolumeClaim", "config_map": "configMap", "empty_dir": "emptyDir"}
    checked = 0
    for store in spec.stores:
        for source in store.sources:
            location = source.location
            if not isinstance(location, PathSource) or location.volume is None:
                continue
            mount = mounts[location.path]
            assert mount["readOnly"] is True and mount["name"] == names.source_volume_name(store.id, source.name)
            volume = volumes[mount["name"]]
            assert kinds[location.volume.kind] in volume
            checked += 1
    assert checked == 3
    assert volumes[mounts["/srv/handbook"]["name"]]["persistentVolumeClaim"] == {
        "claimName": "handbook-docs",
        "readOnly": True,
    }


def test_each_git_source_gets_a_git_sync_sidecar_the_server_reads_read_only(pod: dict[str, Any]) -> None:
    spec = load_spec(SPEC)
    server, *sidecars = pod["containers"]
    env = {item["name"]: item.get("value") for item in server["env"]}
    assert env[names.GIT_CHECKOUTS_ENV] == names.GIT_CHECKOUTS_DIR
    server_mounts = {mount["name"]: mount for mount in server["volumeMounts"]}
    git = [
        (store, source) for store in spec.stores for source in store.sources if isinstance(source.location, GitSource)
    ]
    assert len(sidecars) == len(git) == 2
    ports = set()
    for (store, source), sidecar in zip(git, sidecars, strict=True):
        location = source.location
        assert isinstance(location, GitSource)
        directory = names.git_checkout_volume_dir(names.GIT_CHECKOUTS_DIR, store.id, source.name)
        assert sidecar["name"] == names.git_sync_container_name(store.id, source.name)
        assert sidecar["image"] == spec.sync.git_sync_image == "registry.k8s.io/git-sync/git-sync:v4.4.0"
        args = dict(arg.removeprefix("--").split("=", 1) for arg in sidecar["args"])
        assert args["repo"] == location.repo and args["ref"] == location.ref
        # The server reads <root>/<link>, which is names.git_checkout_path: one derivation, both sides.
        assert f"{args['root']}/{args['link']}" == names.git_checkout_path(
            names.GIT_CHECKOUTS_DIR, store.id, source.name
        )
        assert args["period"] == "900s" and args["max-failures"] == "-1"
        (mount,) = sidecar["volumeMounts"]
        assert mount["mountPath"] == directory and not mount.get("readOnly")
        assert server_mounts[mount["name"]] == {"name": mount["name"], "mountPath": directory, "readOnly": True}
        ports.add(sidecar["livenessProbe"]["tcpSocket"]["port"])
        assert args["http-bind"] == f":{sidecar['livenessProbe']['tcpSocket']['port']}"
    assert len(ports) == 2 and spec.server.port not in ports


def test_git_credentials_go_to_git_sync_only(pod: dict[str, Any]) -> None:
    server, wiki, runbooks = pod["containers"]
    env = {item["name"]: item for item in wiki["env"]}
    for name, key in (("GITSYNC_USERNAME", "username"), ("GITSYNC_PASSWORD", "password")):
        assert env[name]["valueFrom"] == {"secretKeyRef": {"name": "wiki-token", "key": key}}
    assert not {item["name"] for item in runbooks["env"]} & {"GITSYNC_USERNAME", "GITSYNC_PASSWORD"}
    # The server runs no git in the cluster: it never gets the token.
    assert "wiki-token" not in str(server["env"])


def test_s3_credentials_come_from_the_secret_and_nothing_else_changes_the_network_policy() -> None:
    spec = load_spec(SPEC)
    rendered = render_files(spec)
    server = yaml.safe_load(rendered["deployment-kb.yaml"])["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in server["env"]}
    (source,) = [s for store in spec.stores for s in store.sources if isinstance(s.location, S3Source)]
    assert isinstance(source.location, S3Source) and source.location.credentials is not None
    for ref, key in (
        (source.location.credentials.access_key_id, "access_key_id"),
        (source.location.credentials.secret_access_key, "secret_access_key"),
    ):
        assert env[ref.env]["valueFrom"] == {"secretKeyRef": {"name": "s3-reports", "key": key}}
    # Egress is not restricted by the rendered policy (Ingress only), so git and S3 need no rule: docs/render.md.
    policy = yaml.safe_load(rendered["networkpolicy-kb.yaml"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
