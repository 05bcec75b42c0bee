"""Liveness and readiness for load balancers and orchestrators (one blueprint, no credential, no identifiers).

``GET /healthz``: the process answers (liveness: restart it when this fails).
``GET /readyz``: it can do its work now (readiness: route requests to it only when this is 200):
the database answers, the PACS answers (a QIDO-RS probe, remembered for a few seconds), and at least
one inference worker is alive (this process's own, or a fleet worker's heartbeat in the database).
"""
from __future__ import annotations

import threading
import time

from flask import Blueprint, current_app, jsonify

bp = Blueprint("health", __name__)

_PACS_PROBE_TTL_S = 10.0
_pacs_probe: dict = {}
_pacs_lock = threading.Lock()


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "alive"})


def _pacs_ok(source) -> tuple[bool, str]:
    """A QIDO-RS probe of the PACS, at most once per ``_PACS_PROBE_TTL_S`` per process."""
    now = time.monotonic()
    with _pacs_lock:
        hit = _pacs_probe.get(id(source))
        if hit is not None and now - hit[0] < _PACS_PROBE_TTL_S:
            return hit[1], hit[2]
    try:
        source.search_for_studies({"StudyDate": "19000101"})   # cheap: matches (almost) nothing
        result = (True, "answers")
    except Exception as e:
        result = (False, f"{type(e).__name__}: {getattr(e, 'code', 'unreachable')}")
    with _pacs_lock:
        _pacs_probe[id(source)] = (now, *result)
    return result


@bp.get("/readyz")
def readyz():
    state = current_app.extensions["cxr_cds"]
    checks: dict[str, str] = {}
    ready = True
    try:
        state.runtime.store.ping()
        checks["database"] = "answers"
    except Exception as e:
        ready, checks["database"] = False, getattr(e, "message", type(e).__name__)
    ok, why = _pacs_ok(state.runtime.source)
    ready &= ok
    checks["pacs"] = why
    if state.runner is not None and not state.runner.stopping:
        checks["worker"] = "in this process"
    else:
        try:
            alive = state.runtime.store.live_workers(3 * state.settings.worker_heartbeat_s)
        except Exception:
            alive = 0
        checks["worker"] = f"{alive} alive" if alive else "none alive"
        ready &= alive > 0
    return jsonify({"status": "ready" if ready else "not-ready", "checks": checks}), 200 if ready else 503
