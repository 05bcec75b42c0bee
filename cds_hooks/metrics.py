"""Prometheus metrics of one app: hook latency, stored-result hits, the model queue, feedback per finding
(CDS feedback and the review page's verdicts and decisions), write-backs.

Each app gets its own ``CollectorRegistry`` (tests build many apps in one process; the global
registry would refuse the second set of names). Under gunicorn with several worker processes
(``cxr-cds serve --workers N`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a per-instance directory), counters
and histograms are written to that directory by every process and ``/metrics`` sums them
(``prometheus_client.multiprocess``); the live gauges (job queue, model queue) are read at scrape
time by the process that answers (the job queue is in the shared database: the same for all).
The hit ratio gauge exists in a single process only; in multiprocess mode compute it from
``cxr_cds_stored_result_lookups_total`` in PromQL.
"""
from __future__ import annotations

import os
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

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
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._hits = self._misses = 0                   # this process's look-ups, for the ratio gauge
        self._queue_depth: Callable[[], float] | None = None
        self._in_flight: Callable[[], float] | None = None
        self._queued: Callable[[], dict] | None = None
        self.live = _LiveGauges(self)
        r.register(self.live)
        self.model_latency = Histogram("cxr_cds_model_latency_seconds", "Time of one generate call",
                                       buckets=_MODEL_BUCKETS, registry=r)
        self.analyses = Counter("cxr_cds_analyses", "Background analyses by outcome", ["outcome"], registry=r)
        self.cards = Counter("cxr_cds_cards", "Cards returned by kind and indicator", ["kind", "indicator"],
                             registry=r)
        self.feedback = Counter("cxr_cds_feedback", "Feedback outcomes per finding on the card",
                                ["outcome", "finding"], registry=r)
        # the review page's feedback, same family: a verdict per finding, a decision per draft, write-backs
        self.review_verdicts = Counter("cxr_cds_feedback_review_verdicts",
                                       "Review-page verdicts per finding (agree or disagree)",
                                       ["verdict", "finding", "presence"], registry=r)
        self.review_decisions = Counter("cxr_cds_feedback_review_decisions",
                                        "Review-page decisions on a draft (accept or reject) by reason",
                                        ["decision", "reason"], registry=r)
        self.write_back = Counter("cxr_cds_write_back", "Accepted drafts written to the EHR's FHIR server",
                                  ["outcome"], registry=r)
        self.review_links = Counter("cxr_cds_review_link_refusals", "Review links refused, by why",
                                    ["why"], registry=r)

        # every request refused before any work: 400/401/403/404/412/413/415 by a stable reason code
        self.rejected = Counter("cxr_cds_rejected_requests", "Requests rejected, by HTTP status and reason",
                                ["status", "reason"], registry=r)

    def lookup(self, hit: bool) -> None:
        """Count a hook's look-up of an analysis: stored (hit) or queued (miss)."""
        self.stored_lookups.labels("hit" if hit else "miss").inc()
        if hit:
            self._hits += 1
        else:
            self._misses += 1

    def bind_queue_depth(self, depth: Callable[[], int]) -> None:
        """Read the model queue depth at scrape time."""
        self._queue_depth = lambda: float(depth())

    def bind_in_flight(self, count: Callable[[], int]) -> None:
        """Read the jobs queued or running (every process's: they are in the store) at scrape time."""
        self._in_flight = lambda: float(count())

    def bind_queued(self, queued: Callable[[], dict]) -> None:
        """Read the waiting jobs by priority (``hook``, ``precompute``, ``backfill``) at scrape time."""
        self._queued = queued

    def registry_for_scrape(self) -> CollectorRegistry:
        """What ``/metrics`` exposes: this app's registry, or in multiprocess mode every process's values."""
        if not self.multiprocess:
            return self.registry
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(self.live)
        return registry


class _LiveGauges:
    """Gauges read at scrape time (a custom collector: ``Gauge.set_function`` has no multiprocess mode)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):
        m = self.metrics
        if not m.multiprocess:
            total = m._hits + m._misses
            yield GaugeMetricFamily("cxr_cds_stored_result_hit_ratio",
                                    "Share of hook look-ups answered from a stored analysis",
                                    value=m._hits / total if total else 0.0)
        # 0 in a process without a model of its own (a fleet's API) or an unbound one
        yield GaugeMetricFamily("cxr_cds_model_queue_depth", "Requests waiting for this process's model",
                                value=_safe(m._queue_depth) if m._queue_depth is not None else 0.0)
        if m._in_flight is not None:
            yield GaugeMetricFamily("cxr_cds_analyses_in_flight", "Analysis jobs queued or running (all processes)",
                                    value=_safe(m._in_flight))
        if m._queued is not None:
            family = GaugeMetricFamily("cxr_cds_jobs_waiting", "Jobs waiting to run, by priority",
                                       labels=["priority"])
            try:
                for priority, count in m._queued().items():
                    family.add_metric([priority], float(count))
            except Exception:        # a scrape never fails on the store
                pass
            yield family


def _safe(read: Callable[[], float]) -> float:
    try:
        return read()
    except Exception:
        return float("nan")
