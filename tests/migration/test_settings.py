"""`migration:` in the spec: the top-level defaults, a store's own settings merged over them, the limits a
store's builder gets."""

from __future__ import annotations

from pathlib import Path

from config import load_spec
from config.names import derived_store_id
from vectorstore.migration.service import limits_for

VALID = Path(__file__).resolve().parents[1] / "specs" / "valid"


def test_store_settings_merge_over_the_top_level() -> None:
    spec = load_spec(VALID / "migration.yaml")
    docs = limits_for(spec, derived_store_id("docs"))
    archive = limits_for(spec, derived_store_id("archive"))
    assert (docs.keep_previous_seconds, docs.concurrency, docs.max_tokens_per_minute) == (172800.0, 2, 1_000_000)
    assert (archive.keep_previous_seconds, archive.concurrency, archive.max_tokens_per_minute) == (1800.0, 1, 1_000_000)
    # A store created through the API follows the top level (it never migrates, but the lookup must not fail).
    assert limits_for(spec, "vs_api_store").keep_previous_seconds == 172800.0


def test_defaults() -> None:
    spec = load_spec(VALID / "minimal.yaml")
    assert (spec.migration.keep_previous_seconds, spec.migration.concurrency) == (86400.0, 2)
    assert spec.migration.max_tokens_per_minute == 0
