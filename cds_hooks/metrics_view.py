"""``GET /metrics``: the Prometheus exposition of the app's :class:`cds_hooks.metrics.Metrics` (one blueprint).

The metrics themselves live in ``cds_hooks.metrics`` (no Flask: the worker process uses them too).
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


bp = Blueprint("metrics", __name__)


def _authorize_scrape(state) -> None:
    """``/metrics`` needs ``CXR_CDS_METRICS_TOKEN`` when set; unset, it is open only with auth off or
    ``CXR_CDS_METRICS_PUBLIC=true`` (its labels tell an outsider what the service sees and refuses)."""
    from cds_hooks.errors import Unauthorized
    from cds_hooks.security import check_shared_secret

    settings = state.settings
    token = getattr(settings, "metrics_token", None)
    if token:
        try:
            check_shared_secret(request.headers.get("Authorization"), token)
        except Unauthorized:
            raise Unauthorized("/metrics: not the metrics bearer secret (CXR_CDS_METRICS_TOKEN)") from None
        return
    if settings.auth == "jwt" and not getattr(settings, "metrics_public", False):
        raise Unauthorized("/metrics: no CXR_CDS_METRICS_TOKEN is set and CXR_CDS_METRICS_PUBLIC is not true "
                           "(with JWT auth on, the metrics are not public)")


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition of this app's registry (see :func:`_authorize_scrape` for the credential)."""
    _authorize_scrape(current_app.extensions["cxr_cds"])
    registry = current_app.extensions["cxr_cds"].metrics.registry_for_scrape()
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
