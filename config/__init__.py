"""The spec: model, JSON Schema, validation and every derived name. `render` and `vectorstore` import it."""

from config.model import ApiKey, Embedding, SecretRef, Spec, Store
from config.spec import CheckResult, Problem, SpecError, check_bytes, check_file, load_spec, schema_text

__all__ = [
    "ApiKey",
    "CheckResult",
    "Embedding",
    "Problem",
    "SecretRef",
    "Spec",
    "SpecError",
    "Store",
    "check_bytes",
    "check_file",
    "load_spec",
    "schema_text",
]
