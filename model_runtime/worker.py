"""InferenceWorker: one thread owns the Engine; callers submit requests and get Futures.

Bounded queue (QueueFull), micro-batching (max_batch, batch_wait_ms), single-flight by key,
per-request deadline (InferenceTimeout), out-of-memory retry with half the batch (then OutOfMemory).

Yes/no scoring (``Engine.score_yes_no``) goes through the same queue and thread, so it never runs
concurrently with a generation. A scoring job is one batched prefill of its own (all the questions
on one image) and runs alone when it reaches the head of the queue; a generation batch being formed
takes the generation requests behind it too (micro-batching is unchanged), so the job waits at most
one batch longer. Out of memory while scoring: the questions in two halves, down to one at a time.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from model_runtime.errors import InferenceTimeout, ModelRuntimeError, OutOfMemory, QueueFull
from model_runtime.types import GenerationRequest, GenerationResult, PromptLike

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _ScoreJob:
    """Yes/no questions on one image: one ``engine.score_yes_no`` call on the worker thread."""

    image: np.ndarray               # (H, W) uint8, the same object for every question (one vision pass)
    prompts: tuple[PromptLike, ...]


@dataclass
class _Item:
    request: GenerationRequest | _ScoreJob
    future: Future
    key: str | None
    enqueued: float                 # time.monotonic()
    deadline: float | None          # time.monotonic() limit, or None


class InferenceWorker:
    """A thread that owns an Engine and batches concurrent requests.

    Parameters
    ----------
    engine : Engine (or anything with ``generate(requests)``, ``validate(request)`` and, for
        :meth:`score`, ``score_yes_no(image, prompts)``)
    max_queue : int
        Requests waiting at most; one more raises QueueFull.
    max_batch : int
        Requests generated together at most.
    batch_wait_ms : float
        How long the first request of a batch waits for others to join.
    """

    def __init__(self, engine, max_queue: int = 64, max_batch: int = 8, batch_wait_ms: float = 10):
        if max_queue < 1 or max_batch < 1 or batch_wait_ms < 0:
            raise ValueError(f"max_queue and max_batch must be >= 1 and batch_wait_ms >= 0, got "
                             f"{max_queue}, {max_batch}, {batch_wait_ms}")
        self.engine = engine
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000.0
        self._queue: deque[_Item] = deque()
        # single-flight: ("generate" | "score", key) -> the Future of the queued or running work
        self._inflight: dict[tuple[str, str], Future] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "InferenceWorker":
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="cxr-inference-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float | None = 30) -> None:
        """Stop after the batch in progress; requests still queued fail with ModelRuntimeError."""
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for item in pending:
            self._fail(item, ModelRuntimeError("the inference worker stopped before this request ran"))
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> "InferenceWorker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    # -- submitting -------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, key: str | None = None, timeout_s: float | None = None) -> Future:
        """Queue a request; returns a Future of a GenerationResult.

        Parameters
        ----------
        request : GenerationRequest
        key : str, optional
            Single-flight key (e.g. instance + model + prompt version + context): while a request with the
            same key is queued or running, the same Future is returned and the work is done once.
        timeout_s : float, optional
            Deadline: a request still queued past it fails with InferenceTimeout.

        Raises
        ------
        InvalidRequest
            The request is malformed (checked now, not in the worker).
        QueueFull
            ``max_queue`` requests are already waiting.
        ModelRuntimeError
            The worker is not running.
        """
        self.engine.validate(request)
        return self._enqueue(request, None if key is None else ("generate", key), timeout_s)

    def submit_score(self, image: np.ndarray, prompts: Sequence[PromptLike], key: str | None = None,
                     timeout_s: float | None = None) -> Future:
        """Queue yes/no questions on one image; returns a Future of ``list[float]`` (P("Yes") per prompt).

        The engine's ``score_yes_no`` runs on the worker thread, never at the same time as a generation.

        Parameters
        ----------
        image : np.ndarray
            (H, W) uint8 grayscale, MONOCHROME2.
        prompts : sequence of prompts
            Yes/no questions, each with ``<image>`` (e.g. ``prompts.finding_questions().values()``).
        key : str, optional
            Single-flight key for scoring (its own key space: a generation with the same key is other work).
        timeout_s : float, optional
            Deadline: a job still queued past it fails with InferenceTimeout.

        Raises
        ------
        InvalidRequest
            The image or a prompt is malformed (checked now, not in the worker).
        QueueFull
            ``max_queue`` requests are already waiting.
        ModelRuntimeError
            The worker is not running.
        """
        prompts = tuple(prompts)
        for prompt in prompts:
            self.engine.validate(GenerationRequest(image, prompt))
        if not prompts:
            done: Future = Future()
            done.set_result([])
            return done
        return self._enqueue(_ScoreJob(image, prompts), None if key is None else ("score", key), timeout_s)

    def _enqueue(self, work: GenerationRequest | _ScoreJob, key: tuple[str, str] | None,
                 timeout_s: float | None) -> Future:
        with self._cond:
            if self._thread is None or self._stopping:
                raise ModelRuntimeError("the inference worker is not running; call start() first")
            if key is not None and key in self._inflight:
                return self._inflight[key]
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the inference queue is full ({self.max_queue} requests waiting); retry later")
            now = time.monotonic()
            future: Future = Future()
            item = _Item(work, future, key, now, now + timeout_s if timeout_s is not None else None)
            if key is not None:
                self._inflight[key] = future
                future.add_done_callback(lambda _f, k=key: self._forget(k, _f))
            self._queue.append(item)
            self._cond.notify_all()
        return future

    def run(self, request: GenerationRequest, key: str | None = None, timeout_s: float | None = None) -> GenerationResult:
        """Submit and wait. Raises InferenceTimeout past ``timeout_s`` (the work itself goes on)."""
        future = self.submit(request, key=key, timeout_s=timeout_s)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            raise InferenceTimeout(
                f"no result within {timeout_s:g} s (queue depth {self.queue_depth}); the generation continues "
                "in the background and a later call with the same key gets it"
            ) from None

    def score(self, image: np.ndarray, prompts: Sequence[PromptLike], key: str | None = None,
              timeout_s: float | None = None) -> list[float]:
        """Submit yes/no questions and wait: P("Yes") vs "No" per prompt, as ``Engine.score_yes_no``.

        Same errors as :meth:`submit_score`; InferenceTimeout past ``timeout_s`` (the work goes on),
        OutOfMemory when even one question at a time does not fit.
        """
        future = self.submit_score(image, prompts, key=key, timeout_s=timeout_s)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            raise InferenceTimeout(
                f"no scores within {timeout_s:g} s (queue depth {self.queue_depth}); the scoring continues "
                "in the background and a later call with the same key gets it"
            ) from None

    def _forget(self, key: tuple[str, str], future: Future) -> None:
        with self._cond:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    # -- the thread -------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Item]:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
            if isinstance(self._queue[0].request, _ScoreJob):
                batch = [self._queue.popleft()]          # a scoring job is a batch of its own
            else:
                first_seen = time.monotonic()
                while self._generations_queued() < self.max_batch and not self._stopping:
                    left = self.batch_wait_s - (time.monotonic() - first_seen)
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = self._pop_generations(self.max_batch)
        now = time.monotonic()
        live = []
        for item in batch:
            if item.deadline is not None and now > item.deadline:
                waited = (now - item.enqueued) * 1e3
                self._fail(item, InferenceTimeout(f"request waited {waited:.0f} ms in the queue, past its deadline"))
            elif item.future.set_running_or_notify_cancel():
                live.append(item)
        return live

    def _generations_queued(self) -> int:
        return sum(not isinstance(item.request, _ScoreJob) for item in self._queue)

    def _pop_generations(self, n: int) -> list[_Item]:
        """Take up to ``n`` generation requests in queue order; scoring jobs keep their places (under the lock)."""
        taken: list[_Item] = []
        kept: deque[_Item] = deque()
        for item in self._queue:
            if len(taken) < n and not isinstance(item.request, _ScoreJob):
                taken.append(item)
            else:
                kept.append(item)
        self._queue = kept
        return taken

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                if self._stopping:
                    return
                continue
            if isinstance(batch[0].request, _ScoreJob):
                self._run_score(batch[0])
            else:
                self._run_batch(batch)

    def _run_score(self, item: _Item) -> None:
        job = item.request
        try:
            probs = self._score(job.image, list(job.prompts))
        except Exception as exc:  # a failed job fails its request, never the worker
            if not isinstance(exc, OutOfMemory):
                log.exception("scoring failed for %d questions", len(job.prompts))
            self._fail(item, exc)
            return
        item.future.set_result(probs)

    def _score(self, image: np.ndarray, prompts: list[PromptLike]) -> list[float]:
        """``score_yes_no``; on out-of-memory, the questions in two halves (down to one at a time)."""
        try:
            return [float(p) for p in self.engine.score_yes_no(image, prompts)]
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            _release_cached_memory()
            if len(prompts) == 1:
                if isinstance(exc, OutOfMemory):
                    raise
                raise OutOfMemory("out of device memory scoring 1 yes/no question on one image; "
                                  "use 4bit quantization or a larger device") from exc
            half = len(prompts) // 2
            log.warning("out of memory scoring %d questions; retrying as %d + %d",
                        len(prompts), half, len(prompts) - half)
            return self._score(image, prompts[:half]) + self._score(image, prompts[half:])

    def _run_batch(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        try:
            results = self.engine.generate([item.request for item in batch])
        except OutOfMemory as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            half = len(batch) // 2
            log.warning("out of memory at batch %d; retrying as %d + %d", len(batch), half, len(batch) - half)
            self._run_batch(batch[:half])
            self._run_batch(batch[half:])
            return
        except Exception as exc:  # a failed batch fails its requests, never the worker
            log.exception("generation failed for a batch of %d", len(batch))
            for item in batch:
                self._fail(item, exc)
            return
        for item, result in zip(batch, results):
            timings = dict(result.timings, queue_ms=(started - item.enqueued) * 1e3)
            item.future.set_result(replace(result, timings=timings))

    @staticmethod
    def _fail(item: _Item, exc: BaseException) -> None:
        if not item.future.done():
            if item.future.running() or item.future.set_running_or_notify_cancel():
                item.future.set_exception(exc)


def _is_out_of_memory(exc: BaseException) -> bool:
    """Our OutOfMemory, or torch's (``Engine.score_yes_no`` lets ``torch.OutOfMemoryError`` through)."""
    if isinstance(exc, OutOfMemory):
        return True
    torch: Any = sys.modules.get("torch")      # imported by the engine already; never imported here
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def _release_cached_memory() -> None:
    torch: Any = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
