"""How well stored vectors moved by noise stand in for real queries in a calibration without traffic.

    python bench/perturbed_queries.py --keep DIR --store vs_recall_none --rows 40000 --dims 768 \\
        [--clusters 200] [--spread 1.0] [--noise 0.1 0.5 1.0] [--ef 10 20 40 64]

Runs on a store that bench/recall_target.py built and kept (`--keep DIR --reuse`; same --rows, --dims,
--clusters and --spread, so the fresh queries come from the same clusters). Prints recall@10 per `ef_search`
for 100 fresh points from the data's clusters (the real-query stand-in) and for 100 stored vectors moved by
`measure.perturbed_queries` at each noise level, both measured by the calibration's own code
(`measure._cases`, `measure._trial`: exact top-10 by the server's exact statement, the perturbed query's own
row left out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import psycopg
from _db import bench_server
from pgvector.psycopg import register_vector_async
from recall_target import make_vectors

from vectorstore.calibration import measure
from vectorstore.calibration.plans import Plan
from vectorstore.search import vector
from vectorstore.storage import stores


async def compare(dsn: str, args: argparse.Namespace) -> dict[str, dict[int, float]]:
    _, queries = make_vectors(args.rows, args.dims, args.clusters, 250, args.spread)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await register_vector_async(conn)
        record = await stores.get(conn, args.store)
        if record is None:
            raise SystemExit(f"no store {args.store!r} in {args.keep}")
        budget = measure.Budget(db_seconds=1e9, db_share=1.0)
        await measure.prepare(conn, budget)
        sets: dict[str, list[measure.Query]] = {"fresh": [measure.Query(q) for q in queries[150:250].tolist()]}
        for noise in args.noise:
            sets[f"perturbed {noise}"] = await measure.perturbed_queries(
                conn, record.layout, 100, record.analyzed_rows, 1, noise
            )
        out: dict[str, dict[int, float]] = {}
        for name, items in sets.items():
            cases = await measure._cases(conn, record.layout, items, vector.NO_FILTER, (), budget)
            out[name] = {}
            for ef in args.ef:
                trial = await measure._trial(conn, record.layout, cases, Plan(ef), budget)
                out[name][ef] = round(trial.recall, 3)
            print(json.dumps({name: out[name]}), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", required=True)
    parser.add_argument("--store", default="vs_recall_none")
    parser.add_argument("--rows", type=int, default=40000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    parser.add_argument("--ef", type=int, nargs="+", default=[10, 20, 40, 64])
    args = parser.parse_args()
    with bench_server(args.keep) as server_dsn:
        info: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(server_dsn)
        info["dbname"] = "recall_target_bench"
        dsn = psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in info.items() if v is not None})
        asyncio.run(compare(dsn, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
