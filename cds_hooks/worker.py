"""The worker side of the job layer: claim a job, run the pipeline, store the analysis; no HTTP.

``JobRunner`` runs in the service process (embedded default) or alone in ``cxr-cds worker`` (a
fleet: one process, one model, one GPU). ``concurrency`` claim loops feed one inference worker so
its micro-batches fill. Each claimed job holds a lease in the store, renewed by a heartbeat; a
runner that dies loses its leases and another runner takes the jobs. A failed attempt is retried
after a growing delay while attempts remain (PACS or model trouble); a failure that retrying cannot
fix (no frontal image, an undecodable instance) fails the job at once with its reason.
``stop()`` stops claiming, lets running jobs finish for a grace period, and gives back the rest.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

from cds_hooks.jobs import plan_from_json
from cds_hooks.pipeline import run_analysis
from cds_hooks.settings import Settings
from cds_hooks.store import ClaimedJob, Store, StoreUnavailable
from model_runtime import GenerationSettings
from prompts import ClinicalContext

log = logging.getLogger(__name__)

def reason_of(error: BaseException) -> tuple[str, bool]:
    """``(reason, permanent)`` for a failed attempt, as ``kind:code: message`` (``jobs.AnalysisFailed`` reads it).

    Permanent: a retry cannot fix it (no such study, no frontal image, an unsupported or undecodable
    instance, a bad request to the model); the job then fails at once with its reason. Our own typed
    errors (imaging, model) are written never to carry patient identifiers; anything else may (a
    library's message can quote a header value), so only its type is kept.
    """
    from imaging import ImagingError, NoFrontalRadiograph, StudyNotFound, UndecodableImage, UnsupportedImage
    from model_runtime import InvalidRequest, ModelLoadError, ModelRuntimeError

    name = type(error).__name__
    if isinstance(error, ImagingError):
        permanent = isinstance(error, (StudyNotFound, NoFrontalRadiograph, UnsupportedImage, UndecodableImage))
        return f"imaging:{getattr(error, 'code', name)}: {error}", permanent
    if isinstance(error, ModelRuntimeError):
        # a backend says whether the same request may succeed later (vLLM down or 5xx: yes; a 4xx: no)
        permanent = isinstance(error, (InvalidRequest, ModelLoadError)) or getattr(error, "retryable", None) is False
        return f"model:{getattr(error, 'code', name)}: {error}", permanent
    return f"other:{name}: (message not logged)", False


class JobRunner:
    """Claims jobs from the store and runs them.

    Parameters
    ----------
    store : Store
    runtime : Runtime
        Needs ``source``, ``generate`` and (optionally) ``score``.
    settings : Settings
    metrics : Metrics, optional
    on_done : callable, optional
        Called after each finished attempt (the embedded analyzer wakes its waiting hooks).
    """

    def __init__(self, store: Store, runtime: Any, settings: Settings, metrics: Any = None, *,
                 worker_id: str | None = None, concurrency: int | None = None,
                 on_done: Callable[[], None] | None = None, wake: threading.Condition | None = None):
        if runtime.generate is None:
            raise ValueError("a JobRunner needs a runtime with a model (generate)")
        self.store, self.runtime, self.settings, self.metrics = store, runtime, settings, metrics
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.concurrency = concurrency or settings.worker_concurrency
        self.on_done = on_done
        self._wake = wake or threading.Condition()
        self._stop = threading.Event()
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._generation = GenerationSettings(max_new_tokens=settings.max_new_tokens)
        from cds_hooks.pipeline import model_key

        self._model_key = model_key(runtime.model_identity)
        self.completed = 0
        self.failed = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "JobRunner":
        self._beat()
        for i in range(self.concurrency):
            t = threading.Thread(target=self._loop, name=f"cxr-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        hb = threading.Thread(target=self._heartbeat, name="cxr-job-heartbeat", daemon=True)
        hb.start()
        self._threads.append(hb)
        log.info("job runner %s started (%d claim loops)", self.worker_id, self.concurrency)
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming; wait up to ``grace_s`` for running jobs; give back the leases of the rest."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        end = time.monotonic() + grace_s
        for t in self._threads:
            t.join(timeout=max(0.0, end - time.monotonic()))
        with self._held_lock:
            unfinished = list(self._held)
        for key in unfinished:
            try:
                if self.store.release(key, self.worker_id):
                    log.info("job %s given back unfinished at shutdown", key[:12])
            except StoreUnavailable as e:
                log.warning("job %s could not be given back (%s); its lease will expire", key[:12], e)
        try:
            self.store.worker_gone(self.worker_id)
        except StoreUnavailable:
            pass

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- loops ----------------------------------------------------------------------------------
    def _beat(self) -> None:
        self.store.worker_seen(self.worker_id, self._model_key)

    def _heartbeat(self) -> None:
        """Renew the leases of running jobs and say this worker is alive."""
        period = max(0.5, min(self.settings.job_lease_s / 3.0, self.settings.worker_heartbeat_s))
        while not self._stop.wait(period):
            try:
                self._beat()
                with self._held_lock:
                    held = list(self._held)
                for key in held:
                    self.store.renew(key, self.worker_id, lease_s=self.settings.job_lease_s)
            except StoreUnavailable as e:
                log.warning("heartbeat failed: %s", e)

    def _loop(self) -> None:
        idle = 0.05
        while not self._stop.is_set():
            try:
                job = self.store.claim(self.worker_id, lease_s=self.settings.job_lease_s)
            except StoreUnavailable as e:
                log.error("cannot claim jobs: %s", e)
                self._stop.wait(2.0)
                continue
            if job is None:
                with self._wake:
                    self._wake.wait(idle)
                idle = min(idle * 2, 0.5)
                continue
            idle = 0.05
            with self._held_lock:
                self._held.add(job.key)
            try:
                self.run_one(job)
            finally:
                with self._held_lock:
                    self._held.discard(job.key)
                if self.on_done is not None:
                    self.on_done()

    # -- one job --------------------------------------------------------------------------------------
    def _generate(self, request: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.runtime.generate(request)
        finally:
            if self.metrics is not None:
                self.metrics.model_latency.observe(time.perf_counter() - t0)

    def run_one(self, job: ClaimedJob) -> str:
        """Run one claimed job to ``done``, ``queued`` (retry) or ``failed``; returns the status."""
        if job.payload.get("kind") == "sr":
            return self.run_sr(job)
        payload = job.payload
        plan = plan_from_json(payload)
        sop = plan.selection.sop_instance_uid
        read: list = []
        try:
            analysis = run_analysis(self.runtime.source, plan, on_image=read.append,
                                    context=ClinicalContext.from_json(payload.get("context") or {}),
                                    generate=self._generate, template=payload["prompt_key"],
                                    settings=self._generation, score=self.runtime.score,
                                    max_pixels=self.settings.max_pixels,
                                    min_short_edge=self.settings.decode_min_short_edge or None,
                                    known_undecodable=self._known_undecodable)
        except Exception as e:
            reason, permanent = reason_of(e)
            self._record_undecodable(sop, e)
            log.warning("analysis of study %s failed (attempt %d of %d): %s", plan.study.study_instance_uid,
                        job.attempts, job.max_attempts, reason.split(":", 1)[1])
            return self._failed(job, reason, permanent=permanent)
        try:
            analysis_id = self.store.complete(job.key, analysis, prompt_key=payload["prompt_key"],
                                              model_key=payload.get("model_key") or self._model_key,
                                              accession_tag=payload.get("accession_tag"))
        except StoreUnavailable as e:
            log.error("job %s: the analysis could not be stored (%s); the job will be retried", job.key[:12], e)
            return "lost"
        self.completed += 1
        if self.metrics is not None:
            self.metrics.analyses.labels("stored").inc()
        log.info("analysis %s stored for study %s", analysis_id, plan.study.study_instance_uid)
        self._after_store(analysis_id, read[0] if read else None)
        if self.settings.pacs_write == "sr":
            self._queue_sr(analysis_id, plan)
        return "done"

    # -- results back into the PACS ------------------------------------------------------------------
    def _queue_sr(self, analysis_id: str, plan: Any) -> None:
        """Queue the DICOM SR of a stored analysis (one job per analysis: never two SRs for one draft)."""
        from cds_hooks.store import BACKFILL

        try:
            self.store.enqueue(f"sr:{analysis_id}", study_instance_uid=plan.study.study_instance_uid,
                               sop_instance_uid=plan.selection.sop_instance_uid,
                               payload={"kind": "sr", "analysis_id": analysis_id}, priority=BACKFILL,
                               max_attempts=max(5, self.settings.job_max_attempts), kind="sr")
        except Exception as e:       # never fails the analysis: the draft is stored and served
            log.warning("SR of analysis %s not queued: %s", analysis_id, type(e).__name__)

    def run_sr(self, job: ClaimedJob) -> str:
        """Write the SR of one stored analysis to the PACS (STOW-RS); a 5xx or an outage is retried."""
        import dicom_sr

        analysis_id = job.payload["analysis_id"]
        body = self.store.get_by_id(analysis_id)
        if body is None:
            return self._failed(job, f"other:missing_analysis: analysis {analysis_id} is not stored", permanent=True)
        try:
            record = dicom_sr.write_for_analysis(self.runtime.source, body)
        except dicom_sr.DicomSrError as e:        # messages hold no identifiers (dicom_sr.errors)
            retry = bool(getattr(e, "retryable", False))
            log.warning("SR of analysis %s not stored in the PACS (attempt %d of %d, %s): %s: %s", analysis_id,
                        job.attempts, job.max_attempts, "retried" if retry else "not retried", e.code, e)
            return self._failed(job, f"pacs:{e.code}: {e}", permanent=not retry)
        except Exception as e:
            log.warning("SR of analysis %s not stored in the PACS: %s (message not logged)", analysis_id,
                        type(e).__name__)
            return self._failed(job, f"other:{type(e).__name__}: (message not logged)", permanent=False)
        self.store.finish(job.key, record.to_json())
        log.info("SR %s of analysis %s stored in the PACS", record.to_json().get("sop_instance_uid"), analysis_id)
        return "done"

    def _after_store(self, analysis_id: str, image: Any) -> None:
        """Follow-up work on a stored analysis: the review page's rendition of the image read."""
        if image is None:
            return
        from cds_hooks.rendition import render_rendition
        from cds_hooks.review_store import ReviewStore

        try:
            ReviewStore(self.store).put_rendition(analysis_id, render_rendition(image.pixels))
        except Exception as e:      # the draft stands without its picture; the review page says so
            log.warning("rendition of analysis %s not stored: %s", analysis_id, type(e).__name__)

    def _failed(self, job: ClaimedJob, reason: str, *, permanent: bool) -> str:
        delay = self.settings.job_retry_delay_s * (2 ** max(0, job.attempts - 1))
        try:
            status = self.store.fail(job.key, self.worker_id, reason, retry=not permanent, delay_s=delay)
        except StoreUnavailable as e:
            log.error("job %s: the failure could not be recorded (%s)", job.key[:12], e)
            return "lost"
        self.failed += 1
        if self.metrics is not None:
            self.metrics.analyses.labels("error" if status == "failed" else "retry").inc()
        return status

    def _record_undecodable(self, sop_instance_uid: str, error: Exception) -> None:
        """Record an undecodable instance version, so that later attempts answer from the record without
        decoding again until the stored instance changes (already recorded: nothing to do)."""
        from imaging import UndecodableImage

        fingerprint = getattr(error, "fingerprint", None)
        if not isinstance(error, UndecodableImage) or not fingerprint:
            return
        try:
            recorded = self.store.undecodable(sop_instance_uid)
            if recorded is None or recorded[0] != fingerprint:
                self.store.mark_undecodable(sop_instance_uid, fingerprint,
                                            json.dumps({"code": error.code, "message": str(error)[:300]}))
        except StoreUnavailable:
            pass

    def _known_undecodable(self, sop_instance_uid: str) -> Any:
        """The failure recorded for an instance (``imaging`` compares its fingerprint with the one fetched)."""
        from imaging import UndecodableImage

        try:
            recorded = self.store.undecodable(sop_instance_uid)
        except StoreUnavailable:
            return None
        if recorded is None:
            return None
        fingerprint, reason = recorded
        try:
            detail = json.loads(reason)
        except ValueError:
            detail = {"code": "undecodable_image", "message": reason}
        return UndecodableImage(f"recorded earlier for this instance, not decoded again until it changes: "
                                f"{detail.get('message')}", code=detail.get("code"), sop_instance_uid=sop_instance_uid,
                                fingerprint=fingerprint)
