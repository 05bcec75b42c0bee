"""The API side of the job layer: stored results first, durable jobs for the rest, bounded waits.

The hook clock and the study-arrival clock both come here. ``Analyzer.obtain`` answers with a
stored analysis or the job of that analysis key (one row per key in the store: twenty identical
calls on any number of processes share one model run); ``Analyzer.wait`` waits for it at most
until the caller's deadline. The work itself is done by ``cds_hooks.worker.JobRunner`` — in this
process (embedded default) or in ``cxr-cds worker`` processes (a fleet) — which claims jobs from
the same store. Importable without Flask.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from cds_hooks.pipeline import Analysis, Plan, analysis_key, model_key, plan_study
from cds_hooks.runtime import Runtime
from cds_hooks.settings import Settings
from cds_hooks.store import BACKFILL, HOOK, PRECOMPUTE, JobState
from imaging import Selection, StudyMatch, find_prior
from prompts import ClinicalContext

if TYPE_CHECKING:                     # the worker process imports this module without Flask
    from cds_hooks.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["Analyzer", "Obtained", "PriorLookup", "AnalysisFailed", "Poller", "plan_to_json", "plan_from_json",
           "accession_lookup_tag", "HOOK", "PRECOMPUTE", "BACKFILL"]


class AnalysisFailed(Exception):
    """An attempt of the analysis a hook waits for failed (or the job failed for good).

    ``kind`` is ``imaging``, ``model`` or ``other``; ``code`` the error's stable code (or type name);
    ``message`` identifier-free (our typed errors' text, else "(message not logged)").
    """

    def __init__(self, reason: str):
        kind, _, rest = reason.partition(":")
        code, _, message = rest.partition(": ")
        if kind not in ("imaging", "model", "other") or not code:
            kind, code, message = "other", "failed", reason
        super().__init__(f"{code}: {message}")
        self.kind, self.code, self.message = kind, code, message


@dataclass(frozen=True)
class Obtained:
    """An analysis that is stored (``analysis``) or on its way (``job``)."""

    key: str
    analysis: Analysis | None = None
    job: JobState | None = None

    @property
    def stored(self) -> bool:
        return self.analysis is not None


@dataclass(frozen=True)
class PriorLookup:
    """The prior study of a study (``plan``; None: none within ``max_days``) and its analysis, stored or queued."""

    plan: Plan | None
    obtained: Obtained | None = None
    max_days: int = 365


def accession_lookup_tag(accession_number: str | None) -> str | None:
    """What the store keeps of an accession number to find drafts without the PACS: a stable hash, the
    same in every process (unlike ``redact.accession_tag``, the per-deployment keyed hash for log lines)."""
    if not accession_number or not accession_number.strip():
        return None
    return hashlib.sha256(b"cxr-cds/accession|" + accession_number.strip().encode()).hexdigest()[:32]


def plan_to_json(plan: Plan) -> dict:
    """A plan as a job payload: UIDs, date and the instance choice; no PatientID, no accession number."""
    s, sel = plan.study, plan.selection
    return {"study": {"study_instance_uid": s.study_instance_uid,
                      "study_date": s.study_date.isoformat() if s.study_date else None,
                      "modalities": list(s.modalities), "description": s.description},
            "selection": {"series_instance_uid": sel.series_instance_uid, "sop_instance_uid": sel.sop_instance_uid,
                          "view": sel.view, "reason": sel.reason, "considered": list(sel.considered)}}


def plan_from_json(d: dict) -> Plan:
    s, sel = d["study"], d["selection"]
    return Plan(study=StudyMatch(study_instance_uid=s["study_instance_uid"],
                                 study_date=date.fromisoformat(s["study_date"]) if s.get("study_date") else None,
                                 accession_number=None, modalities=tuple(s.get("modalities") or ()),
                                 description=s.get("description")),
                selection=Selection(series_instance_uid=sel["series_instance_uid"],
                                    sop_instance_uid=sel["sop_instance_uid"], view=sel["view"],
                                    reason=sel["reason"], considered=tuple(sel.get("considered") or ())))


class Analyzer:
    """Plans studies, finds stored analyses, queues jobs and waits for them (bounded).

    Parameters
    ----------
    runtime : Runtime
        Source, model identity, store (``generate`` may be None: an API process of a fleet).
    settings : Settings
        Prompt template, queue bounds, attempts.
    metrics : Metrics
        Where stored-result hits and queue depth are counted.
    """

    def __init__(self, runtime: Runtime, settings: Settings, metrics: Metrics):
        self.runtime, self.settings, self.metrics = runtime, settings, metrics
        self.store = runtime.store
        # hook evaluations (FHIR fallback + QIDO-RS) run here so a hook can stop waiting at its deadline
        self.hook_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="cxr-hook")
        self._plans: dict[tuple, tuple[float, Any]] = {}   # plans and priors found, with when
        self._planning: dict[tuple, Future] = {}          # single-flight QIDO-RS look-ups
        self._lock = threading.Lock()                     # guards the two dicts only: no I/O under it
        self._done = threading.Condition()                # a local worker signals each finished job
        self._poller: Poller | None = None
        metrics.bind_in_flight(lambda: self.store.active_jobs())
        metrics.bind_queued(lambda: self.store.queue_depth())

    @property
    def in_flight(self) -> int:
        """Jobs queued or running (in every process sharing the store)."""
        return self.store.active_jobs()

    @property
    def model_key(self) -> str:
        return model_key(self.runtime.model_identity)

    # -- planning (QIDO-RS) ----------------------------------------------------------------------
    def plan(self, **criteria: Any) -> Plan:
        """``plan_study`` (QIDO-RS) remembered for ``plan_ttl_s``: hooks re-fire for the same order.

        Only found studies are remembered; "not found" is asked again each time (it may arrive any
        moment). Concurrent identical look-ups share one PACS query (a slow PACS is asked once).
        """
        return self._remembered(("plan", *sorted(criteria.items())),
                                lambda: plan_study(self.runtime.source, **criteria))

    def _remembered(self, key: tuple, compute: Any) -> Any:
        """``compute()`` remembered for ``plan_ttl_s`` under ``key``; concurrent calls share one run."""
        now = time.monotonic()
        with self._lock:
            hit = self._plans.get(key)
            if hit is not None and now - hit[0] < self.settings.plan_ttl_s:
                return hit[1]
            future = self._planning.get(key)
            owner = future is None
            if owner:
                future = Future()
                self._planning[key] = future
        if not owner:
            return future.result()
        try:
            plan = compute()
        except BaseException as e:
            future.set_exception(e)
            with self._lock:
                self._planning.pop(key, None)
            raise
        with self._lock:
            if self.settings.plan_ttl_s > 0:
                if len(self._plans) > 10_000:
                    self._plans.clear()
                self._plans[key] = (now, plan)
            self._planning.pop(key, None)
        future.set_result(plan)
        return plan

    # -- the prior study (comparison) ---------------------------------------------------------------
    def prior(self, plan: Plan) -> Plan | None:
        """The prior of ``plan``'s study (``imaging.find_prior``, QIDO-RS), remembered for ``plan_ttl_s``.

        ``plan.study`` must carry the PACS's PatientID and StudyDate (a plan from QIDO-RS does; a job
        payload's does not).

        Raises
        ------
        imaging.ImagingError
            ``PriorUnknown`` (no StudyDate or PatientID on the study) or the PACS failed.
        """
        max_days = self.settings.prior_max_days
        study = plan.study

        def look_up() -> Plan | None:
            found = find_prior(self.runtime.source, study, max_days=max_days)
            return None if found is None else Plan(study=found.study, selection=found.selection)
        return self._remembered(("prior", study.study_instance_uid, max_days), look_up)

    def obtain_prior(self, plan: Plan) -> PriorLookup:
        """The prior of ``plan``'s study and its context-free analysis: stored, else queued at PRECOMPUTE.

        Only an analysis by this model and prompt version counts (``stored``): a prior drafted by
        another version is analysed again, never compared. Never waits.

        Raises
        ------
        imaging.ImagingError
            As :meth:`prior`.
        store.QueueFull
            Too many precomputes wait already.
        """
        prior = self.prior(plan)
        if prior is None:
            return PriorLookup(plan=None, max_days=self.settings.prior_max_days)
        return PriorLookup(plan=prior, obtained=self.obtain(prior, ClinicalContext(), priority=PRECOMPUTE),
                           max_days=self.settings.prior_max_days)

    def warm_prior(self, plan: Plan) -> PriorLookup | None:
        """Queue the prior's analysis (study arrival) so a later hook can compare at once; never raises."""
        from cds_hooks.store import QueueFull
        from imaging import ImagingError

        try:
            return self.obtain_prior(plan)
        except (ImagingError, QueueFull) as e:
            log.info("prior of study %s not queued: %s", plan.study.study_instance_uid,
                     getattr(e, "code", type(e).__name__))
            return None

    # -- stored analyses and jobs ------------------------------------------------------------------
    def key(self, plan: Plan, context: ClinicalContext) -> str:
        """The analysis key; the same with scores on or off (scores are stored with it; see ``Runtime``)."""
        return analysis_key(plan, self.runtime.model_identity, self.settings.template, context)

    def stored(self, plan: Plan, context: ClinicalContext) -> Obtained | None:
        """The stored analysis for this plan: same context first, else any context (study-arrival runs)."""
        key = self.key(plan, context)
        body = self.store.get_analysis(key) or self.store.latest_for_instance(
            plan.selection.sop_instance_uid, self.model_key, self.settings.template)
        return Obtained(key=key, analysis=Analysis.from_json(body)) if body else None

    def stored_for_study(self, *, study_instance_uid: str | None = None,
                         accession_number: str | None = None) -> Analysis | None:
        """The newest stored analysis of a study by this model and prompt, found without the PACS."""
        body = self.store.latest_for_study(model_key=self.model_key, prompt_key=self.settings.template,
                                           study_instance_uid=study_instance_uid,
                                           accession_tag=accession_lookup_tag(accession_number))
        return Analysis.from_json(body) if body else None

    def obtain(self, plan: Plan, context: ClinicalContext, *, priority: int = HOOK,
               accession_number: str | None = None) -> Obtained:
        """A stored analysis, or the (one) job for this key, queued or promoted to ``priority``.

        Raises
        ------
        store.QueueFull
            A new precompute (``priority`` > HOOK) while ``max_queued`` jobs wait.
        """
        found = self.stored(plan, context)
        if found is not None:
            self.metrics.lookup(hit=True)
            return found
        self.metrics.lookup(hit=False)
        key = self.key(plan, context)
        payload = {**plan_to_json(plan), "context": context.to_json(), "model_key": self.model_key,
                   "prompt_key": self.settings.template, "accession_tag": accession_lookup_tag(accession_number)}
        job = self.store.enqueue(
            key, study_instance_uid=plan.study.study_instance_uid,
            sop_instance_uid=plan.selection.sop_instance_uid, payload=payload, priority=priority,
            max_attempts=self.settings.job_max_attempts,
            max_queued=None if priority == HOOK else self.settings.max_queued,
            retry_failed_after_s=self.settings.job_retry_failed_after_s)
        self.notify()
        if job.status == "done" and job.analysis_id:
            body = self.store.get_by_id(job.analysis_id)
            if body is not None:
                return Obtained(key=key, analysis=Analysis.from_json(body), job=job)
        return Obtained(key=key, job=job)

    def wait(self, obtained: Obtained, deadline: float) -> Analysis | None:
        """The analysis once its job is done, or None at ``deadline`` (``time.monotonic()``).

        Raises
        ------
        AnalysisFailed
            The job failed for good; the reason is identifier-free and may be shown on a card.
        """
        if obtained.analysis is not None:
            return obtained.analysis
        first = obtained.job
        pause = 0.02
        while True:
            job = self.store.job(obtained.key)
            if job is not None and job.status == "done" and job.analysis_id:
                body = self.store.get_by_id(job.analysis_id)
                if body is not None:
                    return Analysis.from_json(body)
            if job is not None and job.status == "failed":
                raise AnalysisFailed(job.error or "other:failed: the analysis failed")
            if job is not None and job.status == "queued" and job.error and first is not None and (
                    job.attempts > first.attempts or (first.status == "running" and job.attempts >= first.attempts)):
                # an attempt made while this call waited failed: say so now (the job retries in the
                # background, and a later call gets its result), as a call made before a retry would
                raise AnalysisFailed(job.error)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with self._done:
                self._done.wait(min(pause, remaining))
            pause = min(pause * 2, 0.2)      # a local worker wakes us at once; another process's, within 200 ms

    @property
    def wake(self) -> threading.Condition:
        """Notified when a job is queued or finished in this process (idle local claim loops wait on it)."""
        return self._done

    def notify(self) -> None:
        """Wake waiting hooks and idle local workers (a job was queued or finished in this process)."""
        with self._done:
            self._done.notify_all()

    def analyze_study(self, study_instance_uid: str, *, priority: int = PRECOMPUTE) -> Obtained:
        """Study-arrival clock: plan (QIDO-RS) and queue the context-free analysis of one study, and its prior's.

        Raises
        ------
        imaging.ImagingError
            The study is unknown, has no frontal CR/DX image, or the archive is unavailable.
        store.QueueFull
            Too many precomputes wait already.
        """
        plan = plan_study(self.runtime.source, study_instance_uid=study_instance_uid)   # fresh: it just arrived
        obtained = self.obtain(plan, ClinicalContext(), priority=priority)
        # the comparison's other half, queued behind it; looked up off this call (more QIDO-RS), never waited for
        self.hook_pool.submit(self.warm_prior, plan)
        return obtained

    def study_status(self, study_instance_uid: str) -> dict | None:
        """Where a study's work stands (``GET /studies/{uid}``): its most recent job, or its stored draft."""
        every = self.store.study_jobs(study_instance_uid)
        jobs = [j for j in every if j.kind == "analysis"]
        if jobs:
            # a done job first, then running, queued, failed: the most useful answer for the caller
            order = {"done": 0, "running": 1, "queued": 2, "failed": 3}
            best = min(jobs, key=lambda j: (order.get(j.status, 9), -j.updated))
            out = {"study_instance_uid": study_instance_uid, **best.to_json()}
            sr = next((j for j in every if j.kind == "sr" and best.analysis_id and j.key == f"sr:{best.analysis_id}"),
                      None)
            if sr is not None:          # the DICOM SR of that analysis in the PACS (CXR_CDS_PACS_WRITE=sr)
                out["pacs_results"] = {"status": sr.status, "attempts": sr.attempts,
                                       **({"sr": json.loads(sr.result)} if sr.result else {}),
                                       **({"reason": sr.error} if sr.error else {})}
            return out
        stored = self.stored_for_study(study_instance_uid=study_instance_uid)
        if stored is not None:
            return {"study_instance_uid": study_instance_uid, "status": "done", "analysis_id": stored.analysis_id}
        return None

    def start_polling(self) -> None:
        """Start QIDO-RS polling for new CR/DX studies when ``poll_interval_s`` > 0."""
        if self.settings.poll_interval_s > 0 and self._poller is None:
            self._poller = Poller(self, self.settings.poll_interval_s)
            self._poller.start()

    def close(self) -> None:
        """Stop polling and the hook pool (jobs are durable: nothing queued is lost)."""
        if self._poller is not None:
            self._poller.stop()
            self._poller.join(timeout=10)
        self.hook_pool.shutdown(wait=False, cancel_futures=True)


class Poller(threading.Thread):
    """Every ``interval_s``, QIDO-RS for CR/DX studies of the last day and queue the new ones (backfill)."""

    def __init__(self, analyzer: Analyzer, interval_s: float):
        super().__init__(name="cxr-qido-poller", daemon=True)
        self.analyzer, self.interval_s = analyzer, interval_s
        self._stop_event = threading.Event()
        self.seen: set[str] = set()
        self.since: date | None = None          # first StudyDate to look at; default: yesterday
        self.polls = 0

    def poll_once(self) -> list[str]:
        """One QIDO-RS query (StudyDate from ``since``); returns the StudyInstanceUIDs whose analysis was queued."""
        from cds_hooks.store import QueueFull
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
            try:
                self.analyzer.analyze_study(uid, priority=BACKFILL)
                self.seen.add(uid)
                started.append(uid)
            except QueueFull:
                log.info("QIDO-RS poll: the job queue is full; the remaining studies wait for the next poll")
                break
            except ImagingError as e:
                self.seen.add(uid)
                log.info("study %s not analysed: %s", uid, e)
        self.polls += 1
        return started

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.poll_once()
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
