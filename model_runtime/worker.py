"""InferenceWorker: one thread owns the Engine; callers submit requests and get Futures.

Bounded queue (QueueFull), micro-batching (max_batch, batch_wait_ms), single-flight by key,
per-request deadline (InferenceTimeout), out-of-memory retry with half the batch (then OutOfMemory).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace

from model_runtime.errors import InferenceTimeout, ModelRuntimeError, OutOfMemory, QueueFull
from model_runtime.types import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)


@dataclass
class _Item:
    request: GenerationRequest
    future: Future
    key: str | None
    enqueued: float                 # time.monotonic()
    deadline: float | None          # time.monotonic() limit, or None


class InferenceWorker:
    """A thread that owns an Engine and batches concurrent requests.

    Parameters
    ----------
    engine : Engine (or anything with ``generate(requests)`` and ``validate(request)``)
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
        self._inflight: dict[str, Future] = {}
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
        with self._cond:
            if self._thread is None or self._stopping:
                raise ModelRuntimeError("the inference worker is not running; call start() first")
            if key is not None and key in self._inflight:
                return self._inflight[key]
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the inference queue is full ({self.max_queue} requests waiting); retry later")
            now = time.monotonic()
            future: Future = Future()
            item = _Item(request, future, key, now, now + timeout_s if timeout_s is not None else None)
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

    def _forget(self, key: str, future: Future) -> None:
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
            first_seen = time.monotonic()
            while len(self._queue) < self.max_batch and not self._stopping:
                left = self.batch_wait_s - (time.monotonic() - first_seen)
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        now = time.monotonic()
        live = []
        for item in batch:
            if item.deadline is not None and now > item.deadline:
                waited = (now - item.enqueued) * 1e3
                self._fail(item, InferenceTimeout(f"request waited {waited:.0f} ms in the queue, past its deadline"))
            elif item.future.set_running_or_notify_cancel():
                live.append(item)
        return live

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                if self._stopping:
                    return
                continue
            self._run_batch(batch)

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
