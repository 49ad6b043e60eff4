"""Fixtures of the robustness tests: fake upstream, server processes, databases behind a cuttable proxy.

Everything a fixture starts, it stops: server processes get SIGTERM then SIGKILL, proxies and upstreams
close, databases are dropped. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pgdb import new_database

from robustness.harness import ServerProcess, Upstream, run_upstream, write_spec


@pytest.fixture(scope="module")
def module_dsn(pg_dsn: str) -> Iterator[str]:
    """An empty database shared by one module's tests (one server start per module, not per test)."""
    yield from new_database(pg_dsn, "r")


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with run_upstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[Upstream]:
    with run_upstream() as fake:
        yield fake


Launcher = Callable[..., ServerProcess]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """`launch(dsn, upstream_url, ready=True, **spec options)`: a started server process, stopped at teardown."""
    started: list[ServerProcess] = []

    def start(
        dsn: str, upstream_url: str, *, ready: bool = True, spec: Path | None = None, **options: Any
    ) -> ServerProcess:
        index = len(started)
        spec_path = spec or write_spec(tmp_path / f"spec{index}.yaml", upstream_url, **options)
        server = ServerProcess(spec_path, dsn, tmp_path / f"server{index}.log").start()
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop(grace=10.0)


@pytest.fixture(scope="module")
def shared_server(
    module_dsn: str, module_upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One ready server on the module's database, for tests that don't break it."""
    directory = tmp_path_factory.mktemp("shared")
    spec = write_spec(directory / "spec.yaml", module_upstream.base_url)
    server = ServerProcess(spec, module_dsn, directory / "server.log").start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop(grace=10.0)
