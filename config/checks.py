"""Semantic checks the JSON Schema can't express. Each returns (json path, message) pairs.

They run on schema-defaulted data even when the schema found errors, so one run reports everything;
each check therefore looks before it leaps (isinstance) instead of trusting the shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from config import names
from config.globs import check_glob
from config.model import (
    AZURE_BLOB_HOST_SUFFIX,
    BUILTIN_ALLOWED_DIMENSIONS,
    BUILTIN_MODEL,
    HALFVEC_MAX_INDEXED_DIMENSIONS,
    VECTOR_MAX_DIMENSIONS,
    VECTOR_MAX_INDEXED_DIMENSIONS,
    object_store_kind,
    shown_url,
)
from config.yamlsafe import JsonPath

Finding = tuple[JsonPath, str]

# Where the spec takes a secret reference. `*` matches any list index.
SECRET_REF_PATHS: tuple[JsonPath, ...] = (
    ("embedding", "api_key"),
    ("rerank", "api_key"),
    ("auth", "keys", "*", "api_key"),
)
CREDENTIALS_PATH: JsonPath = ("database", "credentials")
S3_CREDENTIALS_PATH: JsonPath = ("stores", "*", "sources", "*", "s3", "credentials")
GIT_CREDENTIALS_PATH: JsonPath = ("stores", "*", "sources", "*", "git", "credentials")
BACKUP_CREDENTIALS_PATHS: tuple[JsonPath, ...] = (
    ("database", "backup", "credentials"),
    ("database", "restore", "credentials"),
)
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
    for path, value in expand(data, S3_CREDENTIALS_PATH):
        if not isinstance(value, dict) or set(value) - {"secret"}:
            findings.append(
                (
                    path,
                    f"takes only the name of a Secret holding `{names.S3_ACCESS_KEY_ID_KEY}` and "
                    f"`{names.S3_SECRET_ACCESS_KEY_KEY}`, as {{secret: <secret-name>}}; never the values",
                )
            )
    for path, value in expand(data, GIT_CREDENTIALS_PATH):
        if not isinstance(value, dict) or set(value) - {"secret"}:
            findings.append(
                (
                    path,
                    f"takes only the name of a Secret holding `{names.GIT_USERNAME_KEY}` and "
                    f"`{names.GIT_PASSWORD_KEY}`, as {{secret: <secret-name>}}; never the values",
                )
            )
    for path in BACKUP_CREDENTIALS_PATHS:
        value = _get(data, *path)
        if value is not None and (not isinstance(value, dict) or set(value) - {"secret"}):
            findings.append(
                (
                    path,
                    "takes only the name of a Secret holding the object store's credentials, as "
                    "{secret: <secret-name>}; never the values (docs/operations.md lists its keys)",
                )
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


def _dimension_finding(value: Any, quantization: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if quantization == "binary":
        if value <= VECTOR_MAX_DIMENSIONS:
            return None
        return (
            f"{value} dimensions is more than a pgvector `vector` column holds ({VECTOR_MAX_DIMENSIONS:,}), "
            "even with binary quantization; pick a model (or `dimensions`) within that"
        )
    if value <= HALFVEC_MAX_INDEXED_DIMENSIONS:
        return None
    return (
        f"{value} dimensions is more than pgvector can index: up to {VECTOR_MAX_INDEXED_DIMENSIONS:,} are "
        f"stored as `vector`, {VECTOR_MAX_INDEXED_DIMENSIONS + 1:,} to {HALFVEC_MAX_INDEXED_DIMENSIONS:,} as "
        f"`halfvec`; pick a model (or `dimensions`) within that, or `index.quantization: binary` (up to "
        f"{VECTOR_MAX_DIMENSIONS:,})"
    )


def dimensions(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    default = _get(data, "embedding", "dimensions")
    stores_ = _dicts(_get(data, "stores"))
    # The top-level dimensions hold for every store that doesn't override them: check them with the strictest
    # quantization a store using them asks for (or `none` when no store does).
    inheriting = [store for store in stores_ if _get(store, "embedding", "dimensions") is None]
    quantizations = {_get(store, "index", "quantization") for store in inheriting} or {"none"}
    quantization = "binary" if quantizations == {"binary"} else "none"
    message = _dimension_finding(default, quantization)
    if message:
        findings.append((("embedding", "dimensions"), message))
    for index, store in enumerate(stores_):
        message = _dimension_finding(_get(store, "embedding", "dimensions"), _get(store, "index", "quantization"))
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
    for path in (("server", "image"), ("database", "cluster", "image"), ("sync", "git_sync_image")):
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


def builtin_embedding(data: Any) -> list[Finding]:
    """With the built-in model there is no endpoint to name and one model: say so where a spec says otherwise."""
    if _get(data, "embedding", "provider") != "builtin":
        return []
    findings: list[Finding] = []
    for field in ("base_url", "api_key", "send_dimensions"):
        value = _get(data, "embedding", field)
        # send_dimensions is defaulted to false; only a `true` someone wrote is a mistake.
        if value is not None and not (field == "send_dimensions" and value is False):
            findings.append((("embedding", field), f"`{field}` does not apply to provider builtin (no upstream)"))
    places: list[tuple[JsonPath, Any]] = [(("embedding",), _get(data, "embedding"))]
    places += [
        (("stores", i, "embedding"), store.get("embedding")) for i, store in enumerate(_dicts(_get(data, "stores")))
    ]
    for path, block in places:
        if not isinstance(block, dict):
            continue
        model = block.get("model")
        if isinstance(model, str) and model != BUILTIN_MODEL:
            findings.append(((*path, "model"), f"provider builtin has one model, {BUILTIN_MODEL!r} (got {model!r})"))
        dims = block.get("dimensions")
        if isinstance(dims, int) and not isinstance(dims, bool) and dims not in BUILTIN_ALLOWED_DIMENSIONS:
            allowed = ", ".join(str(d) for d in BUILTIN_ALLOWED_DIMENSIONS)
            findings.append(((*path, "dimensions"), f"provider builtin gives {allowed} dimensions (got {dims})"))
    return findings


def pool(data: Any) -> list[Finding]:
    low = _get(data, "database", "pool", "min_size")
    high = _get(data, "database", "pool", "max_size")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        return [(("database", "pool", "min_size"), f"min_size {low} is larger than max_size {high}")]
    return []


# --- stores[].sources ------------------------------------------------------------------------------------

_SOURCE_KINDS = ("path", "git", "s3")
# Paths of the server container that render mounts itself: a source volume can't go there.
_RESERVED_MOUNTS = (names.SPEC_MOUNT_DIR, "/tmp", names.GIT_CHECKOUTS_DIR)  # noqa: S108 - mount points, not temp files
# Attributes every synced file gets from the sync itself.
RESERVED_ATTRIBUTES = ("source", "path")


def _sources(data: Any) -> Iterator[tuple[JsonPath, dict[str, Any]]]:
    for i, store in enumerate(_dicts(_get(data, "stores"))):
        for j, source in enumerate(_dicts(store.get("sources"))):
            yield ("stores", i, "sources", j), source


def source_kinds(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    for path, source in _sources(data):
        kinds = [kind for kind in _SOURCE_KINDS if kind in source]
        if len(kinds) != 1:
            found = ", ".join(f"`{kind}`" for kind in kinds) or "none"
            findings.append((path, f"a source takes exactly one of `path`, `git` or `s3` (found {found})"))
        if "volume" in source and "path" not in source:
            findings.append(((*path, "volume"), "`volume` applies to a `path` source only"))
    return findings


def source_names(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    for i, store in enumerate(_dicts(_get(data, "stores"))):
        items: list[tuple[JsonPath, Any]] = [
            (("stores", i, "sources", j, "name"), source.get("name"))
            for j, source in enumerate(_dicts(store.get("sources")))
        ]
        findings += _unique(items, "source name in this store")
    return findings


def source_globs(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    for path, source in _sources(data):
        for field in ("include", "exclude"):
            patterns = source.get(field)
            for k, pattern in enumerate(patterns if isinstance(patterns, list) else []):
                reason = check_glob(pattern) if isinstance(pattern, str) and pattern else None
                if reason:
                    findings.append(((*path, field, k), reason))
    return findings


def source_attributes(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    for path, source in _sources(data):
        attributes = source.get("attributes")
        for key in RESERVED_ATTRIBUTES:
            if isinstance(attributes, dict) and key in attributes:
                findings.append(
                    (
                        (*path, "attributes", key),
                        f"`{key}` is set by the sync itself (the source name and the file's relative path); "
                        "choose another attribute name",
                    )
                )
    return findings


def source_volumes(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    mounts: list[tuple[JsonPath, Any]] = []
    for path, source in _sources(data):
        directory = source.get("path")
        if "volume" not in source or not isinstance(directory, str):
            continue
        if not directory.startswith("/"):
            findings.append(
                ((*path, "path"), "a source with a `volume` needs an absolute `path`: render mounts it there")
            )
            continue
        normalized = "/" + "/".join(part for part in directory.split("/") if part)
        clash = next(
            (
                reserved
                for reserved in _RESERVED_MOUNTS
                if normalized == reserved or normalized.startswith(reserved + "/")
            ),
            None,
        )
        if normalized == "/" or clash is not None:
            findings.append(
                (
                    (*path, "path"),
                    f"{directory!r} overlaps {clash or 'the root'}, where the server's own files are; "
                    "mount sources elsewhere, such as /srv/<name>",
                )
            )
            continue
        mounts.append(((*path, "path"), normalized))
    findings += _unique(mounts, "volume mount path")
    return findings


def _url_credentials(url: str) -> bool:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return False  # user@host:path, where the user is a login name (usually `git`)
    userinfo, at, _ = rest.split("/", 1)[0].rpartition("@")
    if not at:
        return False
    # A token alone is a valid https username on most forges, so http(s) takes no userinfo at all.
    return scheme in ("http", "https") or ":" in userinfo


def source_urls(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    for path, source in _sources(data):
        repo = _get(source, "git", "repo")
        if isinstance(repo, str) and ("?" in repo or "#" in repo):
            # A forge token often rides in a query (`?private_token=...`), and git needs no query: refuse any.
            findings.append(
                (
                    (*path, "git", "repo"),
                    "has a query string or fragment, where tokens hide; secrets never go in the spec: declare "
                    "`git.credentials: {secret: <name>}` instead, and give the plain repository URL",
                )
            )
        elif isinstance(repo, str) and _url_credentials(repo):
            findings.append(
                (
                    (*path, "git", "repo"),
                    "holds credentials; secrets never go in the spec: declare `git.credentials: {secret: <name>}` "
                    "(a Secret with `username` and `password`) instead",
                )
            )
        if isinstance(repo, str) and _get(source, "git", "credentials") is not None and not repo.startswith("https://"):
            findings.append(
                (
                    (*path, "git", "credentials"),
                    "`credentials` are sent only to an https:// repository; for ssh use a deploy key "
                    "(docs/sources.md), for a public repository omit them",
                )
            )
    return findings


def source_subpaths(data: Any) -> list[Finding]:
    """`git.path` names a directory inside the repository: no `..` (nor `.` or an empty segment) to leave it.
    (The server also resolves it and refuses one a symlink takes outside: docs/sources.md.)"""
    findings: list[Finding] = []
    for path, source in _sources(data):
        subpath = _get(source, "git", "path")
        if not isinstance(subpath, str) or not subpath.strip("/"):
            continue
        if any(segment in ("", ".", "..") for segment in subpath.strip("/").split("/")):
            findings.append(
                (
                    (*path, "git", "path"),
                    f"{subpath!r} has an empty, `.` or `..` segment; `git.path` is a directory inside the repository",
                )
            )
    return findings


def source_secret_envs(data: Any) -> list[Finding]:
    """Two Secret names that become the same env var name (`a-b` and `a.b`) would read each other's keys."""
    seen: dict[str, tuple[JsonPath, str]] = {}
    findings: list[Finding] = []
    for path, source in _sources(data):
        kind = "s3" if isinstance(_get(source, "s3"), dict) else "git"
        secret = _get(source, kind, "credentials", "secret")
        if not isinstance(secret, str):
            continue
        env = names.source_secret_env(secret, "")
        first = seen.setdefault(env, ((*path, kind, "credentials", "secret"), secret))
        if first[1] != secret:
            findings.append(
                (
                    (*path, kind, "credentials", "secret"),
                    f"Secret {secret!r} and {first[1]!r} (at {format_path(first[0])}) give the same env var "
                    f"names ({env}...); rename one",
                )
            )
    return findings


def _search_override_sections(data: Any) -> Iterator[tuple[JsonPath, dict[str, Any]]]:
    """(path, mapping) of every place that takes `search_overrides`: `litellm` and each store's `registry`."""
    litellm = _get(data, "litellm")
    if isinstance(litellm, dict):
        yield ("litellm",), litellm
    for index, store in enumerate(_dicts(_get(data, "stores"))):
        registry = store.get("registry")
        if isinstance(registry, dict):
            yield ("stores", index, "registry"), registry


def search_overrides_once(data: Any) -> list[Finding]:
    return [
        (
            (*path, "search_defaults"),
            "give only `search_overrides`: `search_defaults` is its deprecated old name, and both are set here",
        )
        for path, section in _search_override_sections(data)
        # `search_overrides` is filled in empty when omitted: only a written, non-empty one counts.
        if "search_defaults" in section and section.get("search_overrides")
    ]


def litellm_auth_key(data: Any) -> list[Finding]:
    name = _get(data, "litellm", "auth_key")
    key_names = [key.get("name") for key in _dicts(_get(data, "auth", "keys"))]
    if isinstance(name, str) and name not in key_names:
        known = ", ".join(str(key) for key in key_names)
        return [(("litellm", "auth_key"), f"{name!r} is not an auth.keys name (known: {known})")]
    return []


def litellm_files_settings(data: Any) -> list[Finding]:
    if _get(data, "litellm", "files_settings") is True and _get(data, "litellm", "provider") == "pg_vector":
        return [
            (
                ("litellm", "files_settings"),
                "needs provider 'openai': LiteLLM's pg_vector provider can't attach uploaded files to a store",
            )
        ]
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


def monitoring_needs_pod_monitor(data: Any) -> list[Finding]:
    """The alerts and the dashboard select `job="<namespace>/<name>"`, the job label the Prometheus Operator
    gives the PodMonitor's targets: without the PodMonitor they would watch nothing, and the server-down
    alert could not tell a dead server from one never scraped."""
    server = _get(data, "server")
    if not isinstance(server, dict) or server.get("pod_monitor") is True:
        return []
    return [
        (("server", switch), "needs server.pod_monitor: true: its queries select the series that PodMonitor scrapes")
        for switch in ("prometheus_rule", "grafana_dashboard")
        if server.get(switch) is True
    ]


def dashboard_labels(data: Any) -> list[Finding]:
    """The dashboard ConfigMap's own labels (app.kubernetes.io/*) say what rendered it and for which server:
    a sidecar label must not overwrite them."""
    labels = _get(data, "server", "grafana_dashboard_labels")
    if not isinstance(labels, dict):
        return []
    return [
        (
            ("server", "grafana_dashboard_labels", name),
            "app.kubernetes.io/ labels are set by render (name, instance, component, ...); pick another label",
        )
        for name in labels
        if isinstance(name, str) and name.startswith("app.kubernetes.io/")
    ]


# CNPG's ScheduledBackup reads robfig/cron with seconds: six fields, or one of these descriptors.
CRON_DESCRIPTORS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,#-]+$")
_DESTINATION_HINT = (
    f"the Barman Cloud plugin writes to s3://<bucket>/<path>, gs://<bucket>/<path> or "
    f"https://<account>{AZURE_BLOB_HOST_SUFFIX}/<container>/<path>"
)


def _cron_finding(schedule: str) -> str | None:
    if schedule.startswith("@"):
        ok = schedule in CRON_DESCRIPTORS or re.fullmatch(r"@every [0-9hms.]+", schedule) is not None
        return None if ok else f"unknown descriptor {schedule!r} (known: {', '.join(sorted(CRON_DESCRIPTORS))})"
    fields = schedule.split()
    if len(fields) == 5:
        return (
            f"has five fields; CNPG's cron has six, seconds first: did you mean {'0 ' + ' '.join(fields)!r}? "
            "(with five, the first would be read as seconds)"
        )
    if len(fields) != 6:
        return f"must have six cron fields, seconds first, as '0 0 3 * * *' (found {len(fields)})"
    bad = [field for field in fields if not _CRON_FIELD.match(field)]
    return f"{bad[0]!r} is not a cron field" if bad else None


_OBJECT_STORE_USERINFO = (
    "holds credentials (user:password@ before the bucket or host); secrets never go in the spec: the object "
    "store's credentials come from `credentials: {secret: <name>}`"
)


def _has_userinfo(url: str) -> bool:
    """`scheme://user:password@host...`: an `@` before the first `/` after the scheme. (No bucket, host or
    account name has one, so there is no false alarm.) The URL is never quoted back: it holds the password."""
    _, sep, rest = url.partition("://")
    return bool(sep) and "@" in rest.split("/", 1)[0]


def backup(data: Any) -> list[Finding]:
    """The schedule, the destinations, the restore's credentials, and that a restore never archives over the
    backups it came from (CNPG's docs warn: the WAL of two clusters would interleave in one folder)."""
    findings: list[Finding] = []
    backup_data, restore_data = _get(data, "database", "backup"), _get(data, "database", "restore")
    cluster_name = _get(data, "database", "cluster", "name")
    if isinstance(backup_data, dict):
        schedule = backup_data.get("schedule")
        problem = _cron_finding(schedule) if isinstance(schedule, str) else None
        if problem:
            findings.append((("database", "backup", "schedule"), problem))
        destination = backup_data.get("destination")
        if isinstance(destination, str) and _has_userinfo(destination):
            findings.append((("database", "backup", "destination"), _OBJECT_STORE_USERINFO))
        elif isinstance(destination, str) and object_store_kind(destination) is None:
            findings.append(
                (
                    ("database", "backup", "destination"),
                    f"unsupported destination {shown_url(destination)!r}: {_DESTINATION_HINT}",
                )
            )
    if isinstance(restore_data, dict):
        source = restore_data.get("from")
        if isinstance(source, str) and _has_userinfo(source):
            findings.append((("database", "restore", "from"), _OBJECT_STORE_USERINFO))
        elif isinstance(source, str) and object_store_kind(source) is None:
            findings.append(
                (("database", "restore", "from"), f"unsupported source {shown_url(source)!r}: {_DESTINATION_HINT}")
            )
        if "credentials" not in restore_data and not isinstance(backup_data, dict):
            findings.append(
                (
                    ("database", "restore"),
                    "needs `credentials` (a Secret reference): there is no database.backup to take them from",
                )
            )
        if isinstance(backup_data, dict) and isinstance(source, str):
            destination = backup_data.get("destination")
            backup_server = backup_data.get("server_name", cluster_name)
            restore_server = restore_data.get("server_name", cluster_name)
            if (
                isinstance(destination, str)
                and destination.rstrip("/") == source.rstrip("/")
                and backup_server == restore_server
            ):
                findings.append(
                    (
                        ("database", "backup", "server_name")
                        if "server_name" in backup_data
                        else ("database", "backup"),
                        f"this cluster would archive into the backups it restores from ({shown_url(source)} server "
                        f"{restore_server!r}): give database.backup another `server_name` (or `destination`)",
                    )
                )
    return findings


ALL_CHECKS = (
    uniqueness,
    key_store_limits,
    dimensions,
    chunking,
    images,
    secret_sources,
    builtin_embedding,
    pool,
    source_kinds,
    source_names,
    source_globs,
    source_attributes,
    source_volumes,
    source_urls,
    source_subpaths,
    source_secret_envs,
    search_overrides_once,
    litellm_auth_key,
    litellm_files_settings,
    read_replicas,
    monitoring_needs_pod_monitor,
    dashboard_labels,
    backup,
)


def semantic_findings(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    for check in ALL_CHECKS:
        findings += check(data)
    return findings


# Warnings: the spec is valid and works, but probably not as its author thinks. `vectorstore validate` prints
# them like errors (with `warning:`) and still exits 0. Each has an example in tests/specs/warnings/.


def deprecated_search_defaults(data: Any) -> list[Finding]:
    return [
        (
            (*path, "search_defaults"),
            "`search_defaults` is deprecated: rename it `search_overrides`. LiteLLM merges these values over every "
            "search request, so they override what each caller asks for; they are not defaults",
        )
        for path, section in _search_override_sections(data)
        if "search_defaults" in section and not section.get("search_overrides")
    ]


def litellm_secret_elsewhere(data: Any) -> list[Finding]:
    """LiteLLM in another namespace can't read the Secret its Deployment patch points at."""
    namespace, other = _get(data, "namespace"), _get(data, "litellm", "namespace")
    if not isinstance(other, str) or other == namespace:
        return []
    keys = _dicts(_get(data, "auth", "keys"))
    wanted = _get(data, "litellm", "auth_key")
    key_names = [key.get("name") for key in keys]
    if not keys:
        return []
    chosen = wanted if isinstance(wanted, str) else ("litellm" if "litellm" in key_names else key_names[0])
    secret = next((_get(key, "api_key", "secret") for key in keys if key.get("name") == chosen), None)
    if not isinstance(secret, str):
        return []
    return [
        (
            ("litellm", "namespace"),
            f"LiteLLM runs in namespace {other!r}, but the Secret {secret!r} holding its key is expected in "
            f"{namespace!r}, the spec's: litellm-deployment-patch.yaml reads it in {other!r}, so a copy must "
            "exist there",
        )
    ]


def litellm_read_key_cannot_ingest(data: Any) -> list[Finding]:
    """Provider openai is chosen so that LiteLLM's users can load documents; a read key makes every load a 403."""
    if _get(data, "litellm", "provider") != "openai":
        return []
    keys = _dicts(_get(data, "auth", "keys"))
    key_names = [key.get("name") for key in keys]
    if not keys:
        return []
    wanted = _get(data, "litellm", "auth_key")
    chosen = wanted if isinstance(wanted, str) else ("litellm" if "litellm" in key_names else key_names[0])
    key = next((key for key in keys if key.get("name") == chosen), None)
    if key is None or key.get("scope") != "read":
        return []
    return [
        (
            ("litellm", "provider"),
            f"LiteLLM sends the read-only key {chosen!r}: its users can search, but their uploads, attaches and "
            "/v1/rag/ingest get 403. Give that key scope 'write', or set provider 'pg_vector' for search only",
        )
    ]


def ef_search_over_target(data: Any) -> list[Finding]:
    """A written `index.ef_search` wins over `target_recall`: say so, since the author may expect the opposite."""
    top = _get(data, "search", "target_recall")
    findings: list[Finding] = []
    for index, store in enumerate(_dicts(_get(data, "stores"))):
        own = _get(store, "search")
        target = own["target_recall"] if isinstance(own, dict) and "target_recall" in own else top
        written = _get(store, "index")
        if target is None or not isinstance(written, dict) or "ef_search" not in written:
            continue
        findings.append(
            (
                ("stores", index, "index", "ef_search"),
                f"ef_search {written['ef_search']} is written, so it is used as is: target_recall {target} is only "
                "measured and reported for its unfiltered searches (filtered ones are still tuned). Remove "
                "ef_search to let the server choose it",
            )
        )
    return findings


_QUANTITY_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 0.001,
}  # fmt: skip


def quantity_bytes(value: Any) -> float | None:
    """A Kubernetes memory quantity (schema.json's `quantity`: `512Mi`, `1G`, `1.5Gi`) in bytes, or None."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", value) if isinstance(value, str) else None
    if match is None or match.group(2) not in _QUANTITY_UNITS:
        return None
    return float(match.group(1)) * _QUANTITY_UNITS[match.group(2)]


CACHE_SHARE_OF_MEMORY = 0.5
"""The share of a server pod's memory limit its processes' caches may take before `validate` warns."""


_CACHE_KNOBS: tuple[JsonPath, ...] = (
    ("server", "workers"),
    ("server", "postings_cache_bytes"),
    ("embedding", "query_cache_bytes"),
    ("server", "resources", "limits", "memory"),
)


def caches_over_memory_limit(data: Any) -> list[Finding]:
    """Each server process holds up to `server.postings_cache_bytes` of keyword postings and
    `embedding.query_cache_bytes` of query embeddings, on top of its own memory and its uploads in flight; past
    half the pod's memory limit, it is likely to be OOM-killed once the caches fill (days later, under load).
    Reported at each of those settings the author wrote (`data` has the defaults filled in; `warnings_of` keeps
    the written keys), since any of them may be the one to change."""
    workers, postings, queries = (_get(data, *path) for path in _CACHE_KNOBS[:3])
    limit = quantity_bytes(_get(data, *_CACHE_KNOBS[3]))
    if not all(isinstance(value, int) for value in (workers, postings, queries)) or limit is None:
        return []  # no memory limit (or a value the schema reports as invalid)
    caches = workers * (postings + queries)
    if caches <= CACHE_SHARE_OF_MEMORY * limit:
        return []
    mib = 2**20
    message = (
        f"{workers} server process(es) may each hold {postings / mib:.0f} MiB of keyword postings "
        f"(server.postings_cache_bytes) and {queries / mib:.0f} MiB of query embeddings "
        f"(embedding.query_cache_bytes): {caches / mib:.0f} MiB in all, more than half the pod's memory limit "
        f"of {limit / mib:.0f} MiB, which each process also needs for itself and its uploads. Raise "
        "server.resources.limits.memory, or lower the caches"
    )
    return [(path, message) for path in _CACHE_KNOBS]


ALL_WARNINGS = (
    deprecated_search_defaults,
    litellm_secret_elsewhere,
    litellm_read_key_cannot_ingest,
    ef_search_over_target,
    caches_over_memory_limit,
)


def semantic_warnings(data: Any) -> list[Finding]:
    findings: list[Finding] = []
    for check in ALL_WARNINGS:
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
