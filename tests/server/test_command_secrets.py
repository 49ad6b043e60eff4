"""`plan` and `sync` redact what `serve` redacts: a password in DATABASE_URL never reaches their log lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cli import main

PASSWORD = "pw-5f0c2a9e41-never-shown"


@pytest.mark.parametrize("command", ["plan", "sync"])
def test_the_database_password_is_redacted(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "stack.yaml"
    spec.write_text(
        json.dumps(
            {
                "version": 1,
                "namespace": "t",
                "database": {"cluster": {"name": "pg"}},
                "auth": {"keys": [{"name": "k", "api_key": {"secret": "s", "key": "k"}, "scope": "write"}]},
                "embedding": {"base_url": "http://127.0.0.1:9", "model": "m", "dimensions": 8},
            }
        )
    )
    # Port 1: nothing listens, so the command stops at its first connection, as with a database that is down.
    monkeypatch.setenv("DATABASE_URL", f"postgresql://user:{PASSWORD}@127.0.0.1:1/db")
    assert main([command, "--spec", str(spec)]) == 2
    logging.getLogger("vectorstore").warning("a line that quotes the password: %s", PASSWORD)
    err = capsys.readouterr().err
    assert "a line that quotes the password" in err
    assert PASSWORD not in err
