"""Semantic checks the JSON Schema can't express. Each returns (json path, message) pairs.

They run on schema-defaulted data even when the schema found errors, so one run reports everything;
each check therefore looks before it leaps (isinstance) instead of trusting the shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from config import names
from config.model import HALFVEC_MAX_INDEXED_DIMENSIONS, VECTOR_MAX_INDEXED_DIMENSIONS
from config.yamlsafe import JsonPath

Finding = tuple[JsonPath, str]

# Where the spec takes a secret reference. `*` matches any list index.
SECRET_REF_PATHS: tuple[JsonPath, ...] = (("embedding", "api_key"), ("auth", "keys", "*", "api_key"))
CREDENTIALS_PATH: JsonPath = ("database", "credentials")
_REF_HINT = "reference it instead, as {secret: <secret-name>, key: <key-in-secret>}"


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _get(data: Any, *path: str | int) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def expand(data: Any, pattern: JsonPath) -> Iterator[tuple[JsonPath, Any]]:
    """Concrete (path, value) pairs matching a pattern with `*` for list indexes."""
    if not pattern:
        yield (), data
        return
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        if isinstance(data, list):
            for index, item in enumerate(data):
                for sub, value in expand(item, rest):
                    yield (index, *sub), value
    elif isinstance(data, dict) and head in data:
        for sub, value in expand(data[head], rest):
            yield (head, *sub), value


def literal_secrets(data: Any) -> list[Finding]:
    """Secret fields holding a value instead of a reference. Their schema errors are replaced by these."""
    findings: list[Finding] = []
    for pattern in SECRET_REF_PATHS:
        for path, value in expand(data, pattern):
            if not isinstance(value, dict):
                findings.append((path, f"holds a literal value; secrets never go in the spec: {_REF_HINT}"))
            elif set(value) - {"secret", "key"}:
                extra = ", ".join(sorted(set(value) - {"secret", "key"}))
                findings.append(
                    (path, f"a secret reference takes only `secret` and `key` (found {extra}); {_REF_HINT}")
                )
    credentials = _get(data, *CREDENTIALS_PATH)
    if credentials is not None and (not isinstance(credentials, dict) or set(credentials) - {"secret"}):
        findings.append(
            (
                CREDENTIALS_PATH,
                "takes only the name of a basic-auth Secret holding `username` and `password`, "
                "as {secret: <secret-name>}; never the values",
            )
        )
    return findings


def _unique(items: list[tuple[JsonPath, Any]], what: str) -> list[Finding]:
    findings: list[Finding] = []
    first: dict[Any, JsonPath] = {}
    for path, value in items:
        if value is None:
            continue
        if value in first:
            findings.append((path, f"duplicate {what} {value!r} (also at {format_path(first[value])})"))
        else:
            first[value] = path
    return findings


def uniqueness(data: Any) -> list[Finding]:
    stores = data.get("stores") if isinstance(data, dict) else None
    store_list = stores if isinstance(stores, list) else []
    names_: list[tuple[JsonPath, Any]] = []
    ids: list[tuple[JsonPath, Any]] = []
    registry: list[tuple[JsonPath, Any]] = []
    for index, store in enumerate(store_list):
        if not isinstance(store, dict) or not isinstance(store.get("name"), str):
            continue
        names_.append((("stores", index, "name"), store["name"]))
        if isinstance(store.get("id"), str):
            ids.append((("stores", index, "id"), store["id"]))
        else:
            ids.append((("stores", index, "name"), names.derived_store_id(store["name"])))
        registry_name = _get(store, "registry", "name")
        if isinstance(registry_name, str):
            registry.append((("stores", index, "registry", "name"), registry_name))
    findings = _unique(names_, "store name")
    # A duplicate name already implies a duplicate derived id; report it once.
    duplicate_name_paths = {path for path, _ in findings}
    findings += [finding for finding in _unique(ids, "store id") if finding[0] not in duplicate_name_paths]
    findings += _unique(registry, "registry name")

    keys = _dicts(_get(data, "auth", "keys"))
    key_names: list[tuple[JsonPath, Any]] = [
        (("auth", "keys", i, "name"), key.get("name")) for i, key in enumerate(keys)
    ]
    findings += _unique(key_names, "key name")
    secrets = _dicts(_get(data, "secrets"))
    findings += _unique([(("secrets", i, "name"), item.get("name")) for i, item in enumerate(secrets)], "secret")
    return findings


def key_store_limits(data: Any) -> list[Finding]:
    declared = {store.get("name") for store in _dicts(_get(data, "stores"))}
    findings: list[Finding] = []
    for i, key in enumerate(_dicts(_get(data, "auth", "keys"))):
        limited = key.get("stores")
        if not isinstance(limited, list):
            continue
        for j, name in enumerate(limited):
            if isinstance(name, str) and name not in declared:
                findings.append((("auth", "keys", i, "stores", j), f"{name!r} is not a declared store name"))
    return findings


def _dimension_finding(value: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= HALFVEC_MAX_INDEXED_DIMENSIONS:
        return None
    return (
        f"{value} dimensions is more than pgvector can index: up to {VECTOR_MAX_INDEXED_DIMENSIONS:,} are "
        f"stored as `vector`, {VECTOR_MAX_INDEXED_DIMENSIONS + 1:,} to {HALFVEC_MAX_INDEXED_DIMENSIONS:,} as "
        "`halfvec`; pick a model (or `dimensions`) within that"
    )


def dimensions(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    message = _dimension_finding(_get(data, "embedding", "dimensions"))
    if message:
        findings.append((("embedding", "dimensions"), message))
    for index, store in enumerate(_dicts(_get(data, "stores"))):
        message = _dimension_finding(_get(store, "embedding", "dimensions"))
        if message:
            findings.append((("stores", index, "embedding", "dimensions"), message))
    return findings


def chunking(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    for index, store in enumerate(_dicts(_get(data, "stores"))):
        size = _get(store, "chunking", "max_chunk_size_tokens")
        overlap = _get(store, "chunking", "chunk_overlap_tokens")
        if isinstance(size, int) and isinstance(overlap, int) and overlap * 2 > size:
            findings.append(
                (
                    ("stores", index, "chunking", "chunk_overlap_tokens"),
                    f"overlap {overlap} is more than half of max_chunk_size_tokens {size} (at most {size // 2})",
                )
            )
    return findings


_TAG = re.compile(r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]*)$")


def images(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    for path in (("server", "image"), ("database", "cluster", "image")):
        image = _get(data, *path)
        if not isinstance(image, str):
            continue
        reference, _, digest = image.partition("@")
        tag_match = _TAG.search(reference.rsplit("/", 1)[-1])
        tag = tag_match.group("tag") if tag_match else None
        if tag == "latest":
            findings.append((path, "the `latest` tag is not reproducible; pin a version (or a digest)"))
        elif tag is None and not digest:
            findings.append((path, "has no tag; pin a version such as :1.2.3 (an untagged image means `latest`)"))
        elif path[0] == "database" and tag is not None:
            if not re.match(r"^[0-9]+", tag):
                findings.append((path, f"CNPG needs a tag that starts with the PostgreSQL major version, not {tag!r}"))
            elif "minimal" in tag:
                findings.append((path, "the CNPG `minimal` images carry no pgvector; use a `-standard-` tag"))
    return findings


def secret_sources(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    needs = {
        "onepassword": ("item_path",),
        "external-secrets": ("store", "remote_key"),
        "existing": (),
    }
    for index, item in enumerate(_dicts(_get(data, "secrets"))):
        provider = item.get("provider")
        if provider not in needs:
            continue
        for field in needs[provider]:
            if field not in item:
                findings.append((("secrets", index), f"provider {provider} needs `{field}`"))
        for field in ("item_path", "store", "remote_key"):
            if field in item and field not in needs[provider]:
                findings.append((("secrets", index, field), f"`{field}` does not apply to provider {provider}"))
    return findings


def pool(data: Any) -> list[Finding]:
    low = _get(data, "database", "pool", "min_size")
    high = _get(data, "database", "pool", "max_size")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        return [(("database", "pool", "min_size"), f"min_size {low} is larger than max_size {high}")]
    return []


def read_replicas(data: Any) -> list[Finding]:
    instances = _get(data, "database", "cluster", "instances")
    if _get(data, "database", "read_replicas") is True and isinstance(instances, int) and instances < 2:
        return [
            (
                ("database", "read_replicas"),
                f"needs replicas to read from: set database.cluster.instances to 2 or more (it is {instances})",
            )
        ]
    return []


ALL_CHECKS = (uniqueness, key_store_limits, dimensions, chunking, images, secret_sources, pool, read_replicas)


def semantic_findings(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    for check in ALL_CHECKS:
        findings += check(data)
    return findings


def format_path(path: JsonPath) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}"
        else:
            out += "[" + repr(part) + "]"
    return out
