"""`GET /vector_stores/{id}/recall`: the store's target recall, what was last measured and the settings in use.

Not an OpenAI route. A `read` key may call it; a key limited to other stores gets the same 404 as for a store
that does not exist. It reads what this server loaded from `search_calibration` (the same on every server) and
the store's registry row (for the table it measures and the rows now).

`state`: `off` (no target), `exact` (a store small enough to be searched exactly: recall 1 by construction),
`pending` (not measured yet, or measured on an older table: the fixed settings are in use), `calibrating` (this
server is measuring it now; the previous result, if any, is shown) or `measured`.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from vectorstore import state
from vectorstore.api import auth, common
from vectorstore.calibration import plans
from vectorstore.calibration import service as calibration
from vectorstore.search.vector import MAX_SCAN_TUPLES, exact_is_cheap

routes = web.RouteTableDef()


@routes.get("/vector_stores/{vector_store_id}/recall")
@auth.read_only
async def recall(request: web.Request) -> web.Response:
    async with state.pool(request).connection() as conn:
        record = await common.visible_store(request, conn, request.match_info["vector_store_id"])
    target, declared_ef = calibration.target_of(state.spec(request), record)
    view = request.app[calibration.CALIBRATIONS]
    found = calibration.current(request.app, record)
    fixed = plans.Plan(record.ef_search, MAX_SCAN_TUPLES).describe()
    body: dict[str, Any] = {
        "object": "vector_store.recall",
        "vector_store_id": record.id,
        "target_recall": target,
        "declared_ef_search": declared_ef,
        "rows": record.analyzed_rows,
    }
    if target is None:
        return web.json_response({**body, "state": "off", "settings_in_use": {"all": fixed}})
    if exact_is_cheap(record.analyzed_rows):
        return web.json_response({**body, "state": "exact", "settings_in_use": {"all": {"exact": True}}})
    if found is None:
        status = "calibrating" if record.id in view.running else "pending"
        return web.json_response(
            {**body, "state": status, "settings_in_use": {"all": fixed}, "last_error": view.errors.get(record.id)}
        )
    groups = [
        {
            "filtered": "false" if name == plans.UNFILTERED else name,
            "recall": measured.recall,
            "confidence_interval": [measured.low, measured.high],
            "queries": measured.queries,
            "filters": measured.filters,
            "filter_selectivities": list(measured.selectivities),
            "reached": measured.reached,
            "settings": measured.plan.describe(),
            "p50_ms": measured.p50_ms,
        }
        for name, measured in found.groups.items()
    ]
    return web.json_response(
        {
            **body,
            "state": "calibrating" if record.id in view.running else "measured",
            "reached": found.reached,
            "groups": groups,
            "settings_in_use": {group["filtered"]: group["settings"] for group in groups},
            "sample_source": found.sample_source,
            "rows_measured": found.rows_at,
            "last_measured_at": int(found.calibrated_at),
            "age_seconds": round(max(0.0, time.time() - found.calibrated_at), 1),
            "duration_seconds": found.duration_seconds,
            "db_seconds": found.db_seconds,
            "runs": found.runs,
            "last_error": view.errors.get(record.id),
        }
    )
