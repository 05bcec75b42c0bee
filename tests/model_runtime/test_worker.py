"""InferenceWorker: micro-batching, single-flight, bounded queue, deadlines, OOM retry, clean errors."""
from __future__ import annotations

import contextlib
import threading

import pytest

from model_runtime import (
    GenerationRequest, GenerationSettings, InferenceTimeout, InferenceWorker, InvalidRequest, ModelRuntimeError,
    OutOfMemory, QueueFull,
)

from .conftest import SYSTEM, FakePrompt

SHORT = GenerationSettings(temperature=0, max_new_tokens=3)


class RecordingEngine:
    """Hand-written collaborator: the real tiny engine, recording batch sizes, optionally gated or OOM-ing."""

    def __init__(self, engine, gate: threading.Event | None = None, oom_above: int | None = None,
                 score_error: tuple[int, Exception] | None = None):
        self.engine = engine
        self.gate = gate
        self.oom_above = oom_above
        self.score_error = score_error          # (n, exc): scoring more than n questions raises exc
        self.batches: list[int] = []
        self.calls: list[tuple[str, int]] = []  # ("generate", batch size) | ("score", questions), in order
        self.entered = threading.Event()
        self.active = self.max_active = 0       # engine calls running at once
        self._lock = threading.Lock()

    def validate(self, request):
        self.engine.validate(request)

    def generate(self, requests):
        self.batches.append(len(requests))
        self.calls.append(("generate", len(requests)))
        with self._busy():
            self.entered.set()
            if self.gate is not None:
                self.gate.wait(30)
            if self.oom_above is not None and len(requests) > self.oom_above:
                raise OutOfMemory(f"out of device memory generating a batch of {len(requests)}")
            return self.engine.generate(requests)

    def score_yes_no(self, image, prompts):
        self.calls.append(("score", len(prompts)))
        with self._busy():
            self.entered.set()
            if self.gate is not None:
                self.gate.wait(30)
            if self.score_error is not None and len(prompts) > self.score_error[0]:
                raise self.score_error[1]
            return self.engine.score_yes_no(image, prompts)

    @contextlib.contextmanager
    def _busy(self):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1


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


# -- yes/no scoring through the worker ------------------------------------------------------------------
FINDINGS = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural effusion", "pneumothorax")
QUESTIONS = [FakePrompt("finding_question", "v1", SYSTEM, f"<image>\nIs there {f}? Answer Yes or No.")
             for f in FINDINGS]


def test_scores_through_the_worker_equal_the_engine_directly(tiny_engine, images):
    direct = tiny_engine.score_yes_no(images[0], QUESTIONS)
    with InferenceWorker(tiny_engine) as worker:
        via_worker = worker.score(images[0], QUESTIONS, timeout_s=60)
        via_future = worker.submit_score(images[1], QUESTIONS[:2]).result(60)
    assert via_worker == direct                   # same engine call, same batch: bit-identical
    assert len(direct) == 6 and all(0.0 <= p <= 1.0 for p in direct)
    assert via_future == tiny_engine.score_yes_no(images[1], QUESTIONS[:2])


def test_a_burst_of_identical_score_requests_runs_once(tiny_engine, images):
    gate = threading.Event()
    rec = RecordingEngine(tiny_engine, gate=gate)
    with InferenceWorker(rec) as worker:
        blocker = worker.submit(GenerationRequest(images[1], QUESTIONS[0], SHORT))
        rec.entered.wait(30)                      # the worker is busy: the burst queues up behind it
        burst = [worker.submit_score(images[0], QUESTIONS, key="1.2.3.4|finding_question.v1") for _ in range(20)]
        assert all(f is burst[0] for f in burst) and worker.queue_depth == 1
        # a generation with the same key is other work: keys are per kind
        other = worker.submit(GenerationRequest(images[0], QUESTIONS[0], SHORT), key="1.2.3.4|finding_question.v1")
        assert other is not burst[0]
        gate.set()
        scores = burst[0].result(60)
        blocker.result(60), other.result(60)
    assert rec.calls.count(("score", 6)) == 1
    assert scores == tiny_engine.score_yes_no(images[0], QUESTIONS)


def test_scoring_never_runs_alongside_generation_and_batching_is_unchanged(tiny_engine, images, report_prompt):
    gate = threading.Event()
    rec = RecordingEngine(tiny_engine, gate=gate)
    with InferenceWorker(rec, max_batch=4, batch_wait_ms=0) as worker:
        first = worker.submit(GenerationRequest(images[0], report_prompt, SHORT))
        rec.entered.wait(30)
        a = worker.submit(GenerationRequest(images[1], report_prompt, SHORT))
        scored = worker.submit_score(images[0], QUESTIONS)
        b = worker.submit(GenerationRequest(images[2], report_prompt, SHORT))
        assert worker.queue_depth == 3
        gate.set()
        results = [f.result(60) for f in (first, a, scored, b)]
    # the two generations queued around the scoring job form one batch; the job runs alone after it
    assert rec.calls == [("generate", 1), ("generate", 2), ("score", 6)]
    assert rec.max_active == 1
    assert results[2] == tiny_engine.score_yes_no(images[0], QUESTIONS)


def test_scoring_out_of_memory_retries_with_half_the_questions(tiny_engine, images):
    rec = RecordingEngine(tiny_engine, score_error=(1, OutOfMemory("out of device memory scoring")))
    with InferenceWorker(rec) as worker:
        scores = worker.score(images[0], QUESTIONS, timeout_s=60)
    assert [n for kind, n in rec.calls] == [6, 3, 1, 2, 1, 1, 3, 1, 2, 1, 1]
    # one question at a time instead of six together: equal up to batching round-off
    assert scores == pytest.approx(tiny_engine.score_yes_no(images[0], QUESTIONS), abs=1e-5)


def test_scoring_out_of_memory_at_one_question_is_reported(tiny_engine, images):
    import torch

    rec = RecordingEngine(tiny_engine, score_error=(0, torch.OutOfMemoryError("CUDA out of memory.")))
    with InferenceWorker(rec) as worker:
        with pytest.raises(OutOfMemory, match="out of device memory scoring 1 yes/no question on one image; "
                                              "use 4bit quantization"):
            worker.score(images[0], QUESTIONS[:2], timeout_s=60)
        # the worker survives and goes on generating
        assert worker.run(GenerationRequest(images[0], QUESTIONS[0], SHORT), timeout_s=60).new_tokens == 3


def test_other_scoring_errors_fail_only_that_job(tiny_engine, images):
    rec = RecordingEngine(tiny_engine, score_error=(0, RuntimeError("index out of range in self")))
    with InferenceWorker(rec) as worker:
        with pytest.raises(RuntimeError, match="index out of range in self"):
            worker.score(images[0], QUESTIONS, timeout_s=60)
        assert worker.run(GenerationRequest(images[0], QUESTIONS[0], SHORT), timeout_s=60).new_tokens == 3


def test_score_past_its_deadline_times_out(tiny_engine, images, request_):
    gate = threading.Event()
    rec = RecordingEngine(tiny_engine, gate=gate)
    with InferenceWorker(rec, max_batch=1) as worker:
        worker.submit(request_)
        rec.entered.wait(30)
        late = worker.submit_score(images[0], QUESTIONS, timeout_s=0.001)
        with pytest.raises(InferenceTimeout, match=r"no scores within 0.001 s .* scoring continues in the background"):
            worker.score(images[0], QUESTIONS, timeout_s=0.001)
        gate.set()
        with pytest.raises(InferenceTimeout, match=r"request waited \d+ ms in the queue, past its deadline"):
            late.result(60)
    assert ("score", 6) not in rec.calls


def test_score_on_a_full_queue_raises_queue_full(tiny_engine, images, request_):
    gate = threading.Event()
    rec = RecordingEngine(tiny_engine, gate=gate)
    with InferenceWorker(rec, max_queue=1, max_batch=1) as worker:
        worker.submit(request_)
        rec.entered.wait(30)
        worker.submit_score(images[0], QUESTIONS)
        with pytest.raises(QueueFull, match=r"the inference queue is full \(1 requests waiting\); retry later"):
            worker.submit_score(images[1], QUESTIONS)
        gate.set()


def test_bad_score_input_is_rejected_at_submit(tiny_engine, images):
    with InferenceWorker(tiny_engine) as worker:
        with pytest.raises(InvalidRequest, match="must hold the <image> placeholder"):
            worker.submit_score(images[0], [QUESTIONS[0], FakePrompt("q", "v1", SYSTEM, "no image here")])
        with pytest.raises(InvalidRequest,
                           match=r"image must be a 2-D grayscale array \(H, W\), got shape \(2, 3, 4\)"):
            worker.score(images[0].reshape(-1)[:24].reshape(2, 3, 4), QUESTIONS)
        assert worker.score(images[0], []) == [] and worker.queue_depth == 0


def test_score_on_a_stopped_worker_fails(tiny_engine, images):
    worker = InferenceWorker(tiny_engine)
    with pytest.raises(ModelRuntimeError, match=r"the inference worker is not running; call start\(\) first"):
        worker.score(images[0], QUESTIONS)
