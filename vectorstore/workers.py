"""`vectorstore serve --workers N`: N server processes sharing one port.

One Python process serves from one CPU at most. With N workers the parent resolves everything once (spec,
secrets, the database: an embedded one is started here, once) and starts N children with multiprocessing's
`spawn` (a fresh interpreter each: nothing of the parent's threads or sockets is inherited). Each child runs
exactly what a single-process `serve` runs, with its own database pool, and listens with SO_REUSEPORT, so
the kernel spreads new connections over them. Migrations, reconcile and the ingestion queue need nothing
more than what several replicas on one database already rely on: advisory locks and `SKIP LOCKED`.

Metrics: the children run prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, a directory the
parent owns), so whichever worker answers a scrape reports the counters and histograms of them all, summed,
and the per-process gauges (pool, readiness, replicas up) of each, labelled `worker` (each worker publishes
them every second: observability/metrics.py). Gauges read from the database (queue depth) come once.

Readiness: every worker listens as soon as it starts (so /health answers, as the liveness probe expects), but
/ready, whichever worker answers it, says ready only once each worker has marked itself ready in a directory the
parent owns: a probe never lets clients in while one of the workers would still answer them 503.

Supervision: SIGTERM or SIGINT to the parent stops every child gracefully (each drains like a single
`serve`). A child that exits on its own (a crash, a port it can't bind, a refused reconcile) stops the others,
and the parent exits with the child's code (1 if that was 0), so the pod restarts as a whole. A child whose
parent is gone stops too.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from config import Spec
from vectorstore.settings import Settings

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
STOP_SECONDS = 30.0
"""How long the parent waits for a stopping child (ingestion gives its current file 20 s) before SIGKILL."""


Worker = Callable[[Spec, Settings, int, int], int]
"""What each child runs: (spec, settings, worker index, parent pid) -> exit code. A module-level function,
so that `spawn` can name it to the child (vectorstore.commands.serve_worker)."""


def run_workers(spec: Spec, settings: Settings, count: int, worker: Worker) -> int:
    """Start `count` worker processes on settings' host and port; return the exit code once they are done."""
    context = multiprocessing.get_context("spawn")
    metrics_dir = tempfile.mkdtemp(prefix="vectorstore-metrics-")
    ready_dir = tempfile.mkdtemp(prefix="vectorstore-ready-")
    settings = dataclasses.replace(settings, workers_ready_dir=Path(ready_dir), worker_count=count)
    previous_dir = os.environ.get(MULTIPROC_DIR_ENV)
    # Read by prometheus_client when a child imports it: set before the children start.
    os.environ[MULTIPROC_DIR_ENV] = metrics_dir
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    children = [
        context.Process(
            target=_child, args=(worker, spec, settings, index, os.getpid()), name=f"vectorstore-worker-{index}"
        )
        for index in range(count)
    ]
    code = 0
    try:
        for child in children:
            child.start()
        print(
            f"vectorstore: serving on http://{settings.host}:{settings.port} with {count} worker processes "
            f"(spec '{spec.name}', {len(spec.stores)} declared store(s))",
            file=sys.stderr,
            flush=True,
        )
        while not stopping:
            ended = multiprocessing.connection.wait([child.sentinel for child in children], timeout=0.5)
            if ended and not stopping:  # a child ending because of the same Ctrl-C is no failure
                first = next(child for child in children if child.sentinel in ended)
                # Its sentinel closes a moment before it can be reaped: wait for the exit code.
                first.join(timeout=5.0)
                child_code = first.exitcode if first.exitcode is not None else 1
                print(
                    f"vectorstore serve: worker {children.index(first)} exited with {child_code}; stopping the others",
                    file=sys.stderr,
                    flush=True,
                )
                code = child_code if child_code > 0 else 1
                break
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: a graceful stop, as for a single `serve`
        for child in children:
            child.join(timeout=STOP_SECONDS)
            if child.is_alive():
                child.kill()
                child.join()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if previous_dir is None:
            os.environ.pop(MULTIPROC_DIR_ENV, None)
        else:
            os.environ[MULTIPROC_DIR_ENV] = previous_dir
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(ready_dir, ignore_errors=True)
    return code


def mark_ready(directory: Path, index: int) -> None:
    """Worker `index` finished its startup (migrations, reconcile): /ready may count it."""
    (directory / f"worker-{index}").touch()


def ready_count(directory: Path) -> int:
    try:
        return sum(1 for name in os.listdir(directory) if name.startswith("worker-"))
    except OSError:
        return 0


def _child(worker: Worker, spec: Spec, settings: Settings, index: int, parent: int) -> None:
    sys.exit(worker(spec, settings, index, parent))
