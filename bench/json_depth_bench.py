"""What the JSON nesting-depth check costs, against parsing the same body (the floor), in one run.

    python bench/json_depth_bench.py [--repeats 7]

`json_body` runs `vectorstore.values.too_deep(raw)` before `json.loads(raw)` on every JSON request, so a body
nested thousands of levels deep gets a 400 instead of exhausting the parser's recursion. The check's price is
reported as a fraction of `json.loads` on the same bytes: the typical bodies (a search, a filtered search, an
attach) and a big legitimate one (a prototype batch of 1,024 rows of 768 floats, about 16 MB), plus hostile
16 MiB bodies, where the check has to scan everything (for the deep one it ends the request before any parsing).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vectorstore.values import MAX_JSON_DEPTH, too_deep

MIB = 1 << 20


def _timed(function: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls (after one warm-up call)."""
    function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def bodies() -> dict[str, bytes]:
    rng = random.Random(7)
    nested: object = {"type": "eq", "key": "lang", "value": "en"}
    for _ in range(15):
        nested = {"type": "and", "filters": [nested, {"type": "gte", "key": "year", "value": 2020}]}
    batch = {
        "embeddings": [
            {"content": f"row {i} " * 20, "embedding": [rng.random() for _ in range(768)], "metadata": {"i": i}}
            for i in range(1024)
        ]
    }
    return {
        "search": json.dumps({"query": "how do I rotate the keys?", "max_num_results": 5}).encode(),
        "search, filters 16 levels": json.dumps({"query": "keys", "filters": nested}).encode(),
        "attach with attributes": json.dumps(
            {"file_id": "file-abc", "attributes": {f"k{i}": "v" * 40 for i in range(16)}}
        ).encode(),
        "prototype batch 1024 x 768": json.dumps(batch).encode(),
        "hostile: 16 MiB of []": b"[" + b"[]," * (16 * MIB // 3 - 1) + b"[]]",
        "hostile: 16 MiB string": b'{"q": "' + b"a" * (16 * MIB - 10) + b'"}',
        "hostile: nested 8 MiB deep": b"[" * (8 * MIB) + b"]" * (8 * MIB),
        "hostile: nested, interleaved": (b"[[1]," * (3 * MIB) + b"1" + b"]" * (3 * MIB)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, median of {args.repeats}"
    )
    print("| body | bytes | depth check ms | json.loads ms (floor) | check / loads |")
    print("| --- | --- | --- | --- | --- |")
    for name, raw in bodies().items():
        check = _timed(functools.partial(too_deep, raw), args.repeats)
        deep = too_deep(raw)
        try:
            floor = _timed(functools.partial(json.loads, raw), args.repeats)
            floor_text = f"{floor * 1000:.3f}"
            ratio = f"{check / floor:.3f}"
        except RecursionError:
            floor_text, ratio = "RecursionError (a 500 before the check)", "-"
        verdict = f" (refused: deeper than {MAX_JSON_DEPTH})" if deep else ""
        print(f"| {name}{verdict} | {len(raw):,} | {check * 1000:.3f} | {floor_text} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
