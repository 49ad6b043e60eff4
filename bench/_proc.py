"""CPU time of process trees, read from /proc: what a server or PostgreSQL spent, whoever else shares the machine.

A tree's CPU is each live process's user + system time plus what it has collected from children that exited
(`cutime`/`cstime`), so a pooled backend or a server worker that ends during a run is still counted once.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its closing parenthesis.
    return text[text.rindex(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of `root` and all its descendants, the exited ones included, in seconds."""
    tree = _children()
    total = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        fields = _stat(pid)
        if fields is None:
            continue
        # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
        total += sum(int(value) for value in fields[11:15])
        pending.extend(tree.get(pid, ()))
    return total / _TICKS


def self_cpu_seconds() -> float:
    """This process's own CPU (the bench's HTTP client or psycopg floor), in seconds."""
    times = os.times()
    return times.user + times.system


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields is not None else None
