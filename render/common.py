"""Labels and metadata shared by every rendered object."""

from __future__ import annotations

import re
from typing import Any

from config import Spec

APP_NAME = "vectorstore"
MANAGED_BY = "vectorstore-render"
HTTP_PORT_NAME = "http"

# A label value: at most 63 characters, alphanumerics with -, _ or . inside.
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")

Document = dict[str, Any]


def selector_labels(spec: Spec) -> dict[str, str]:
    """The labels selectors use. Only these two: they never change for the life of the Deployment, and a
    Deployment's selector is immutable."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": spec.name}


def image_version(image: str) -> str | None:
    """The tag of an image reference, if it is a valid label value."""
    reference = image.partition("@")[0]
    last = reference.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    tag = last.rsplit(":", 1)[1]
    return tag if _LABEL_VALUE.match(tag) else None


def labels(spec: Spec, component: str, image: str | None = None) -> dict[str, str]:
    out = {
        **selector_labels(spec),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": APP_NAME,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    version = image_version(image) if image else None
    if version:
        out["app.kubernetes.io/version"] = version
    return dict(sorted(out.items()))


def metadata(
    spec: Spec, name: str, component: str, *, image: str | None = None, annotations: dict[str, str] | None = None
) -> Document:
    meta: Document = {"name": name, "namespace": spec.namespace, "labels": labels(spec, component, image)}
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    return meta
