"""Background analyses: stored results first, identical work done once, and optional QIDO-RS polling.

The hook clock and the study-arrival clock both come here. ``Analyzer.obtain`` answers with a
stored analysis or the one Future of the running analysis for that key (single-flight: twenty
identical calls share one model run); the caller decides how long to wait for it.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from cds_hooks.metrics import Metrics
from cds_hooks.pipeline import Analysis, Plan, analysis_key, plan_study, run_analysis
from cds_hooks.runtime import Runtime
from cds_hooks.settings import Settings
from model_runtime import GenerationSettings
from prompts import ClinicalContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Obtained:
    """An analysis that is stored (``analysis``) or on its way (``future``)."""

    key: str
    analysis: Analysis | None = None
    future: Future | None = None

    @property
    def stored(self) -> bool:
        return self.analysis is not None


class Analyzer:
    """Runs analyses in background threads; one run per analysis key at a time.

    Parameters
    ----------
    runtime : Runtime
        Source, generate callable, model identity, store.
    settings : Settings
        Prompt template and generation limits.
    metrics : Metrics
        Where model latency and analysis outcomes are counted.
    """

    def __init__(self, runtime: Runtime, settings: Settings, metrics: Metrics, *, max_workers: int = 2):
        self.runtime, self.settings, self.metrics = runtime, settings, metrics
        self._jobs = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="cxr-analysis")
        # hook evaluations (FHIR fallback + QIDO-RS) run here so a hook can stop waiting at its deadline
        self.hook_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="cxr-hook")
        self._in_flight: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._generation = GenerationSettings(max_new_tokens=settings.max_new_tokens)
        self._plans: dict[tuple, tuple[float, Plan]] = {}
        metrics.bind_in_flight(lambda: len(self._in_flight))
        self._poller: Poller | None = None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def plan(self, **criteria: str) -> Plan:
        """``plan_study`` (QIDO-RS) remembered for ``plan_ttl_s``: hooks re-fire for the same order.

        Only found studies are remembered; "not found" is asked again each time (it may arrive any moment).
        """
        key = tuple(sorted(criteria.items()))
        now = time.monotonic()
        hit = self._plans.get(key)
        if hit is not None and now - hit[0] < self.settings.plan_ttl_s:
            return hit[1]
        plan = plan_study(self.runtime.source, **criteria)
        if self.settings.plan_ttl_s > 0:
            if len(self._plans) > 10_000:
                self._plans.clear()
            self._plans[key] = (now, plan)
        return plan

    def key(self, plan: Plan, context: ClinicalContext) -> str:
        """The analysis key; the same with scores on or off (scores are stored with it; see ``Runtime``)."""
        return analysis_key(plan, self.runtime.model_identity, self.settings.template, context)

    def stored(self, plan: Plan, context: ClinicalContext) -> Obtained | None:
        """The stored analysis for this plan: same context first, else any context (study-arrival runs)."""
        key = self.key(plan, context)
        body = self.runtime.store.get_analysis(key) or self.runtime.store.latest_for_instance(
            plan.selection.sop_instance_uid, self.runtime.model_identity, self.settings.template)
        return Obtained(key=key, analysis=Analysis.from_json(body)) if body else None

    def obtain(self, plan: Plan, context: ClinicalContext) -> Obtained:
        """A stored analysis, or the Future of the (single) running analysis for this key."""
        key = self.key(plan, context)
        with self._lock:
            future = self._in_flight.get(key)
            if future is not None:
                return Obtained(key=key, future=future)
            found = self.stored(plan, context)
            if found is not None:
                self.metrics.stored_lookups.labels("hit").inc()
                return found
            self.metrics.stored_lookups.labels("miss").inc()
            future = self._jobs.submit(self._run, key, plan, context)
            self._in_flight[key] = future
        future.add_done_callback(lambda _f, k=key: self._done(k))
        return Obtained(key=key, future=future)

    def _done(self, key: str) -> None:
        with self._lock:
            self._in_flight.pop(key, None)

    def _generate(self, request: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.runtime.generate(request)
        finally:
            self.metrics.model_latency.observe(time.perf_counter() - t0)

    def _run(self, key: str, plan: Plan, context: ClinicalContext) -> Analysis:
        # Stored analyses carry no patient or encounter reference: the hook adds them to its own
        # copy of the DiagnosticReport, so one stored draft serves every caller and holds no identifier.
        try:
            # per-finding scores ride on the same worker; a scoring error fails the analysis like a
            # generation error would (the next call retries): one stored analysis, scores included
            analysis = run_analysis(self.runtime.source, plan, context=context, generate=self._generate,
                                    template=self.settings.template, settings=self._generation,
                                    score=self.runtime.score, max_pixels=self.settings.max_pixels,
                                    min_short_edge=self.settings.decode_min_short_edge or None)
        except Exception as e:
            self.metrics.analyses.labels("error").inc()
            # our own typed errors are written never to carry patient identifiers; anything else may
            # (a library's message can quote a header value), so only its type is logged
            from imaging import ImagingError
            from model_runtime import ModelRuntimeError

            detail = str(e) if isinstance(e, (ImagingError, ModelRuntimeError)) else "(message not logged)"
            log.warning("analysis of study %s failed: %s: %s", plan.study.study_instance_uid,
                        type(e).__name__, detail)
            raise
        self.runtime.store.put_analysis(key, analysis, prompt_key=self.settings.template)
        self.metrics.analyses.labels("stored").inc()
        log.info("analysis %s stored for study %s", analysis.analysis_id, plan.study.study_instance_uid)
        return analysis

    def analyze_study(self, study_instance_uid: str) -> Obtained:
        """Study-arrival clock: plan (QIDO-RS) and start the context-free analysis of one study.

        Raises
        ------
        imaging.ImagingError
            The study is unknown, has no frontal CR/DX image, or the archive is unavailable.
        """
        plan = plan_study(self.runtime.source, study_instance_uid=study_instance_uid)   # fresh: it just arrived
        return self.obtain(plan, ClinicalContext())

    def start_polling(self) -> None:
        """Start QIDO-RS polling for new CR/DX studies when ``poll_interval_s`` > 0."""
        if self.settings.poll_interval_s > 0 and self._poller is None:
            self._poller = Poller(self, self.settings.poll_interval_s)
            self._poller.start()

    def close(self) -> None:
        """Stop polling and the pools (running analyses finish; queued ones are dropped)."""
        if self._poller is not None:
            self._poller.stop()
            self._poller.join(timeout=10)
        self.hook_pool.shutdown(wait=False, cancel_futures=True)
        self._jobs.shutdown(wait=False, cancel_futures=True)


class Poller(threading.Thread):
    """Every ``interval_s``, QIDO-RS for CR/DX studies of the last day and analyse the new ones."""

    def __init__(self, analyzer: Analyzer, interval_s: float):
        super().__init__(name="cxr-qido-poller", daemon=True)
        self.analyzer, self.interval_s = analyzer, interval_s
        self._stop_event = threading.Event()
        self.seen: set[str] = set()
        self.since: date | None = None          # first StudyDate to look at; default: yesterday
        self.polls = 0

    def poll_once(self) -> list[str]:
        """One QIDO-RS query (StudyDate from ``since``); returns the StudyInstanceUIDs whose analysis started."""
        from imaging import ImagingError

        started = []
        since = self.since or date.today() - timedelta(days=1)
        try:
            # a date-only search: locate_studies wants an identifier, so ask the source directly
            studies = self.analyzer.runtime.source.search_for_studies({"StudyDate": f"{since:%Y%m%d}-"})
        except ImagingError as e:
            log.warning("QIDO-RS poll failed: %s", e)
            return started
        for study in studies:
            uid = str(study.get("StudyInstanceUID", "") or "")
            found = study.get("ModalitiesInStudy") or []
            modalities = {str(m) for m in ([found] if isinstance(found, str) else found)}
            # absent ModalitiesInStudy: cannot tell here; plan_study refuses non-radiographs
            if self._stop_event.is_set():
                break
            if not uid or uid in self.seen or (modalities and not modalities & {"CR", "DX"}):
                continue
            self.seen.add(uid)
            try:
                self.analyzer.analyze_study(uid)
                started.append(uid)
            except ImagingError as e:
                log.info("study %s not analysed: %s", uid, e)
        self.polls += 1
        return started

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.poll_once()
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
