"""`vectorstore serve` as a real process on 127.0.0.1, for tests that kill it, restart it or read its log."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
from server.conftest import KEY_VALUES, free_port

from config import names

SERVE = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "serve"]


class ServerProcess:
    def __init__(
        self, spec_path: Path, dsn: str, log_path: Path, api_keys: Mapping[str, str] = KEY_VALUES, port: int = 0
    ) -> None:
        self.spec_path = spec_path
        self.dsn = dsn
        self.log_path = log_path
        self.api_keys = dict(api_keys)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": self.dsn,
            **{names.api_key_env(name): value for name, value in self.api_keys.items()},
            "VECTORSTORE_EMBEDDING_API_KEY": "upstream-key",
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*SERVE, "--spec", str(self.spec_path), "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parents[1],
            )

    async def wait_ready(self, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.process is not None and self.process.poll() is None, self.log_path.read_text()[-2000:]
                try:
                    async with http.get(self.base_url + "/ready") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("server did not become ready:\n" + self.log_path.read_text()[-2000:])

    def kill(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=30)
        finally:
            self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
