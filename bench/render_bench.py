"""Render a spec with many stores and compare with the floor: PyYAML dumping the same objects.

    python bench/render_bench.py [--stores 500] [--repeat 7]

Prints one line per measurement (median of the repeats) and the ratio render / floor. The floor is PyYAML
dumping the very documents render produces, measured in the same run on the same machine: with libyaml's
emitter (`yaml.dump(..., Dumper=yaml.CSafeDumper)`, what render uses when PyYAML has it) and, for
reference, with the pure-Python `yaml.safe_dump`. Render's cost over the floor is building the documents
and choosing a quoting style per string.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from config import Spec, check_bytes
from render import litellm
from render.command import render_command
from render.manifests import documents, render_files

BASE = """\
version: 1
name: bench
namespace: bench
database:
  cluster: {name: pg, parameters: {shared_buffers: 512MB, max_connections: 200}}
  credentials: {secret: db}
secrets:
  - {name: db, provider: onepassword, item_path: vaults/x/items/db}
auth:
  keys:
    - {name: litellm, api_key: {secret: keys, key: litellm}, scope: read}
embedding: {base_url: "http://litellm:4000", model: text-embedding-3-small, dimensions: 1536}
litellm: {search_overrides: {max_num_results: 5}}
stores:
"""


def spec_text(stores: int) -> str:
    lines = [BASE]
    for i in range(stores):
        lines.append(
            f"  - name: store-{i:04d}\n"
            f"    description: 'Store {i}: documents for team {i % 37}, \"quoted\" and unicode — 運用'\n"
            f"    metadata: {{team: t{i % 37}, tier: 'gold'}}\n"
            f"    registry: {{name: store-{i:04d}, search_overrides: {{max_num_results: {1 + i % 20}}}}}\n"
        )
    return "".join(lines)


def seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def median_seconds(action: Callable[[], object], repeat: int) -> float:
    return statistics.median(seconds(action) for _ in range(repeat))


def median_ratio(action: Callable[[], object], floor: Callable[[], object], repeat: int) -> float:
    """Each repeat times the action and the floor back to back, so load from elsewhere hits both alike."""
    return statistics.median(seconds(action) / seconds(floor) for _ in range(repeat))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()

    text = spec_text(args.stores)
    result = check_bytes(text.encode("utf-8"), "bench.yaml")
    if result.spec is None:
        for problem in result.problems:
            print(problem, file=sys.stderr)
        return 1
    spec: Spec = result.spec
    files = render_files(spec)
    objects = [*documents(spec), litellm.document(spec)]

    def floor_python() -> object:
        return [yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=2**20) for obj in objects]

    def floor_libyaml() -> object:
        return [
            yaml.dump(obj, Dumper=yaml.CSafeDumper, sort_keys=False, allow_unicode=True, width=2**20) for obj in objects
        ]

    validate = median_seconds(lambda: check_bytes(text.encode("utf-8"), "bench.yaml"), args.repeat)
    render = median_seconds(lambda: render_files(spec), args.repeat)
    floor_c = median_seconds(floor_libyaml, args.repeat) if yaml.__with_libyaml__ else float("nan")
    floor_py = median_seconds(floor_python, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.yaml"
        spec_path.write_text(text, encoding="utf-8")
        output = Path(tmp) / "out"

        def command() -> object:
            # Its one-line "rendered N files" note would interleave with the figures.
            with contextlib.redirect_stderr(io.StringIO()):
                return render_command(spec_path, output, check=False)

        end_to_end = median_seconds(command, args.repeat)

    size = sum(len(content.encode("utf-8")) for content in files.values())
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip())
    print(f"stores: {args.stores}, files: {len(files)}, output: {size / 1024:.0f} KiB, repeats: {args.repeat} (median)")
    print(f"validate spec (config.check_bytes):       {validate * 1000:8.1f} ms")
    print(f"render (build + dump):                    {render * 1000:8.1f} ms")
    print(f"floor: libyaml CSafeDumper, same objects: {floor_c * 1000:8.1f} ms")
    print(f"floor: pure-Python yaml.safe_dump:        {floor_py * 1000:8.1f} ms")
    if yaml.__with_libyaml__:
        ratio = median_ratio(lambda: render_files(spec), floor_libyaml, args.repeat)
        print(f"render / libyaml floor (paired median):   {ratio:8.2f}")
    print(f"render command end to end (load, render, write): {end_to_end * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
