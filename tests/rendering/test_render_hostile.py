"""Values from the spec survive rendering whatever they contain.

The spec is written with hostile strings wherever one reaches a rendered file (store and registry
descriptions, PostgreSQL parameters, ExternalSecret remote keys, the spec text itself); every rendered file is
parsed back twice, with PyYAML's YAML 1.1 loader (`no` is a boolean there) and with the project's YAML 1.2
loader (`0o17` and `1e3` are numbers there), and each value must come back as the same string.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml

from config import check_bytes
from config.yamlsafe import load_yaml
from render.manifests import render_files
from render.yamlout import dump

HOSTILE = [
    "yes",
    "no",
    "on",
    "off",
    "true",
    "null",
    "~",
    "",
    "0123",
    "0o17",
    "0x1F",
    "1e3",
    "1_000",
    "0b101",
    "+12",
    "-0x1F",
    ".5",
    "1.",
    ".NaN",
    "-.inf",
    "True",
    "NULL",
    ".inf",
    "12:30:00",
    "2024-01-01",
    "'single quotes'",
    '"double quotes"',
    "key: value",
    "value # not a comment",
    "- dash",
    "? question",
    "{flow: map}",
    "[flow, seq]",
    "&anchor",
    "*alias",
    "!tag",
    "!!python/object:os.system",
    "%directive",
    "@at",
    "`tick`",
    "|",
    ">",
    "<<",
    "=",
    "line one\nline two",
    "ends with newline\n",
    "\nstarts with newline",
    "  leading spaces",
    "trailing spaces  ",
    "line with trailing space \nnext",
    "tab\tinside",
    "back\\slash",
    "unicode — 運用手順 🚀 é ß",
    "\u2028line separator",
    "---",
    "...",
    "emoji 🚀 and \U0001f600",
    "byte order mark \ufeff inside",
    "next line \x85 char",
]


def _hostile_spec_text() -> str:
    data: dict[str, Any] = {
        "version": 1,
        "namespace": "hostile",
        "database": {
            "cluster": {"name": "pg", "parameters": {f"p_{i}": value for i, value in enumerate(HOSTILE)}},
        },
        "secrets": [
            {"name": f"extra-{i}", "provider": "external-secrets", "store": {"name": "vault"}, "remote_key": value}
            for i, value in enumerate(HOSTILE)
            if value
        ],
        "auth": {"keys": [{"name": "app", "api_key": {"secret": "app-secrets", "key": "api-key"}, "scope": "write"}]},
        "embedding": {"base_url": "http://litellm:4000", "model": "m", "dimensions": 8},
        "stores": [
            {
                "name": f"store {i} {value}".strip()
                if "\n" not in value and "\t" not in value and "\u2028" not in value
                else f"store {i}",
                "description": value,
                "registry": {"name": f"r{i}"},
            }
            for i, value in enumerate(HOSTILE)
        ],
    }
    # Written with the renderer's own dumper: the spec loader must read back what it wrote, too.
    return dump(data, header="# hostile values\n")


def _yaml11(text: str) -> Any:
    return yaml.safe_load(text)


def _yaml12(text: str) -> Any:
    return load_yaml(text.encode("utf-8")).data


@pytest.mark.parametrize("load", [_yaml11, _yaml12], ids=["yaml1.1", "yaml1.2"])
def test_hostile_values_survive_rendering(load: Any) -> None:
    source = _hostile_spec_text()
    result = check_bytes(source.encode("utf-8"), "hostile.yaml")
    assert result.problems == []
    assert result.spec is not None
    files = render_files(result.spec)
    parsed = {name: load(text) for name, text in files.items()}

    registry = parsed["litellm.yml"]["vector_store_registry"]
    assert [entry["litellm_params"]["vector_store_description"] for entry in registry] == HOSTILE

    cluster = parsed["cluster-pg.yaml"]
    assert cluster["spec"]["postgresql"]["parameters"] == {f"p_{i}": value for i, value in enumerate(HOSTILE)}

    remote_keys = {
        obj["metadata"]["name"]: obj["spec"]["dataFrom"][0]["extract"]["key"]
        for obj in parsed.values()
        if isinstance(obj, dict) and obj.get("kind") == "ExternalSecret"
    }
    assert remote_keys == {f"extra-{i}": value for i, value in enumerate(HOSTILE) if value}

    config_map = parsed["configmap-vector-store-spec.yaml"]
    assert config_map["data"]["stack.yaml"] == source
    # And the server, reading the ConfigMap, gets the same spec.
    reread = check_bytes(config_map["data"]["stack.yaml"].encode("utf-8"), "configmap")
    assert reread.spec == result.spec


def test_spec_text_survives_byte_for_byte() -> None:
    """CRLF line ends, trailing blanks and a missing final newline reach the ConfigMap unchanged."""
    source = (
        "version: 1   \r\nnamespace: demo\r\n# comment with 'quotes', \"more\" and: colons  \r\n"
        "database:\r\n  cluster: {name: pg}\r\nauth:\r\n  keys:\r\n"
        "    - {name: app, api_key: {secret: s, key: k}, scope: write}\r\n"
        'embedding: {base_url: "http://litellm:4000", model: m, dimensions: 8}'
    )
    result = check_bytes(source.encode("utf-8"), "crlf.yaml")
    assert result.spec is not None, result.problems
    files = render_files(result.spec)
    config_map = yaml.safe_load(files["configmap-vector-store-spec.yaml"])
    assert config_map["data"]["stack.yaml"] == source


def test_hostile_values_emit_the_same_bytes_with_or_without_libyaml() -> None:
    from render import yamlout
    from render.manifests import documents

    result = check_bytes(_hostile_spec_text().encode("utf-8"), "hostile.yaml")
    assert result.spec is not None
    for obj in [*documents(result.spec), {"all": HOSTILE}]:
        assert dump(obj) == dump(obj, dumper=yamlout.PythonDumper)


def test_random_strings_emit_the_same_bytes_with_or_without_libyaml() -> None:
    """Seeded fuzz over the characters where emitters tend to disagree: controls, quotes, YAML indicators,
    breaks (NEL, LS, PS), BOM, non-BMP. Each string must dump identically and load back unchanged."""
    from render import yamlout

    alphabet = [
        *"abc XYZ019 \t\n\r-?:,[]{}#&*!|>'\"%@`~._=+",
        "\x00", "\x07", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\x9f", "\xa0", "\u200b", "\u2028",
        "\u2029", "\ue000", "\ufeff", "\ufffd", "é", "運", "🚀", "\U0001f600",
    ]  # fmt: skip
    rng = random.Random(20261125)
    for _ in range(5000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        document = {"key": value, value or "empty": [value]}
        text = dump(document, header="")
        assert text == dump(document, header="", dumper=yamlout.PythonDumper), repr(value)
        assert yaml.safe_load(text) == document, repr(value)
