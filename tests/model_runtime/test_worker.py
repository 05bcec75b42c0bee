"""InferenceWorker: micro-batching, single-flight, bounded queue, deadlines, OOM retry, clean errors."""
from __future__ import annotations

import threading

import pytest

from model_runtime import (
    GenerationRequest, GenerationSettings, InferenceTimeout, InferenceWorker, InvalidRequest, ModelRuntimeError,
    OutOfMemory, QueueFull,
)

SHORT = GenerationSettings(temperature=0, max_new_tokens=3)


class RecordingEngine:
    """Hand-written collaborator: the real tiny engine, recording batch sizes, optionally gated or OOM-ing."""

    def __init__(self, engine, gate: threading.Event | None = None, oom_above: int | None = None):
        self.engine = engine
        self.gate = gate
        self.oom_above = oom_above
        self.batches: list[int] = []
        self.entered = threading.Event()

    def validate(self, request):
        self.engine.validate(request)

    def generate(self, requests):
        self.batches.append(len(requests))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.oom_above is not None and len(requests) > self.oom_above:
            raise OutOfMemory(f"out of device memory generating a batch of {len(requests)}")
        return self.engine.generate(requests)


@pytest.fixture
def request_(images, report_prompt):
    return GenerationRequest(images[0], report_prompt, SHORT)


def test_concurrent_requests_are_micro_batched(tiny_engine, images, report_prompt):
    gate = threading.Event()
    rec = RecordingEngine(tiny_engine, gate=gate)
    with InferenceWorker(rec, max_batch=4, batch_wait_ms=0) as worker:
        first = worker.submit(GenerationRequest(images[0], report_prompt, SHORT))
        rec.entered.wait(30)  # the worker is busy with the first: the next three queue up
        rest = [worker.submit(GenerationRequest(im, report_prompt, SHORT)) for im in images]
        assert worker.queue_depth == 3
        gate.set()
        results = [f.result(60) for f in [first, *rest]]
    assert rec.batches == [1, 3]
    assert results[1].token_ids == tiny_engine.generate([GenerationRequest(images[0], report_prompt, SHORT)])[0].token_ids
    assert all(r.timings["queue_ms"] >= 0 for r in results)


def test_same_key_in_flight_gets_the_same_future(tiny_engine, request_):
    gate = threading.Event()
    rec = RecordingEngine(tiny_engine, gate=gate)
    with InferenceWorker(rec) as worker:
        a = worker.submit(request_, key="1.2.3|report.v1")
        b = worker.submit(request_, key="1.2.3|report.v1")
        c = worker.submit(request_, key="other")
        assert a is b and a is not c
        gate.set()
        assert a.result(60) is b.result(60)
        # Once done, the key is free again: new work, new future.
        assert worker.submit(request_, key="1.2.3|report.v1") is not a


def test_full_queue_raises_queue_full(tiny_engine, request_):
    gate = threading.Event()
    rec = RecordingEngine(tiny_engine, gate=gate)
    with InferenceWorker(rec, max_queue=1, max_batch=1) as worker:
        worker.submit(request_)
        rec.entered.wait(30)
        worker.submit(request_)
        with pytest.raises(QueueFull, match=r"the inference queue is full \(1 requests waiting\); retry later"):
            worker.submit(request_)
        gate.set()


def test_request_past_its_deadline_in_the_queue_times_out(tiny_engine, request_):
    gate = threading.Event()
    rec = RecordingEngine(tiny_engine, gate=gate)
    with InferenceWorker(rec, max_batch=1) as worker:
        worker.submit(request_)
        rec.entered.wait(30)
        late = worker.submit(request_, timeout_s=0.001)
        with pytest.raises(InferenceTimeout, match=r"no result within 0.001 s .* continues in the background"):
            worker.run(request_, timeout_s=0.001)
        gate.set()
        with pytest.raises(InferenceTimeout, match=r"request waited \d+ ms in the queue, past its deadline"):
            late.result(60)


def test_out_of_memory_retries_with_half_the_batch(tiny_engine, images, report_prompt):
    gate = threading.Event()
    rec = RecordingEngine(tiny_engine, gate=gate, oom_above=1)
    with InferenceWorker(rec, max_batch=4, batch_wait_ms=0) as worker:
        first = worker.submit(GenerationRequest(images[0], report_prompt, SHORT))
        rec.entered.wait(30)
        rest = [worker.submit(GenerationRequest(im, report_prompt, SHORT)) for im in images[:2]]
        gate.set()
        assert all(f.result(60).new_tokens == 3 for f in [first, *rest])
    assert rec.batches == [1, 2, 1, 1]


def test_out_of_memory_at_batch_one_is_reported(tiny_engine, request_):
    rec = RecordingEngine(tiny_engine, oom_above=0)
    with InferenceWorker(rec) as worker:
        with pytest.raises(OutOfMemory, match="out of device memory generating a batch of 1"):
            worker.run(request_, timeout_s=60)


def test_invalid_request_is_rejected_at_submit(tiny_engine, images):
    from .conftest import FakePrompt

    with InferenceWorker(tiny_engine) as worker:
        with pytest.raises(InvalidRequest, match="must hold the <image> placeholder"):
            worker.submit(GenerationRequest(images[0], FakePrompt("q", "v1", "s", "no image here")))


def test_submit_to_a_stopped_worker_fails(tiny_engine, request_):
    worker = InferenceWorker(tiny_engine)
    with pytest.raises(ModelRuntimeError, match=r"the inference worker is not running; call start\(\) first"):
        worker.submit(request_)


def test_stop_fails_queued_requests(tiny_engine, request_):
    gate = threading.Event()
    rec = RecordingEngine(tiny_engine, gate=gate)
    worker = InferenceWorker(rec, max_batch=1).start()
    running = worker.submit(request_)
    rec.entered.wait(30)
    queued = worker.submit(request_)
    threading.Timer(0.05, gate.set).start()
    worker.stop()
    assert running.result(60).new_tokens == 3
    with pytest.raises(ModelRuntimeError, match="the inference worker stopped before this request ran"):
        queued.result(60)


def test_bad_worker_settings_are_rejected(tiny_engine):
    with pytest.raises(ValueError, match="max_queue and max_batch must be >= 1"):
        InferenceWorker(tiny_engine, max_batch=0)
