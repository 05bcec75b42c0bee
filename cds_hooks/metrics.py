"""Prometheus metrics of one app: hook latency, stored-result hits, the model queue, feedback per finding.

Each app gets its own ``CollectorRegistry`` (tests build many apps in one process; the global
registry would refuse the second set of names).
"""
from __future__ import annotations

from typing import Callable

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MODEL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The service's metrics, registered on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.hook_latency = Histogram("cxr_cds_hook_latency_seconds", "Hook response time by hook",
                                      ["hook"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stored_lookups = Counter("cxr_cds_stored_result_lookups",
                                      "Hook look-ups of an analysis: hit (stored) or miss (computed)",
                                      ["result"], registry=r)
        self.hit_ratio = Gauge("cxr_cds_stored_result_hit_ratio",
                               "Share of hook look-ups answered from a stored analysis", registry=r)
        self.hit_ratio.set_function(self._ratio)
        self.queue_depth = Gauge("cxr_cds_model_queue_depth", "Requests waiting for the model", registry=r)
        self.analyses_in_flight = Gauge("cxr_cds_analyses_in_flight", "Background analyses running or queued",
                                        registry=r)
        self.model_latency = Histogram("cxr_cds_model_latency_seconds", "Time of one generate call",
                                       buckets=_MODEL_BUCKETS, registry=r)
        self.analyses = Counter("cxr_cds_analyses", "Background analyses by outcome", ["outcome"], registry=r)
        self.cards = Counter("cxr_cds_cards", "Cards returned by kind and indicator", ["kind", "indicator"],
                             registry=r)
        self.feedback = Counter("cxr_cds_feedback", "Feedback outcomes per finding on the card",
                                ["outcome", "finding"], registry=r)

    def _ratio(self) -> float:
        hits = self.stored_lookups.labels("hit")._value.get()
        misses = self.stored_lookups.labels("miss")._value.get()
        return hits / (hits + misses) if hits + misses else 0.0

    def bind_queue_depth(self, depth: Callable[[], int]) -> None:
        """Read the model queue depth at scrape time."""
        self.queue_depth.set_function(lambda: float(depth()))

    def bind_in_flight(self, count: Callable[[], int]) -> None:
        self.analyses_in_flight.set_function(lambda: float(count()))


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition of this app's registry."""
    registry = current_app.extensions["cxr_cds"].metrics.registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
