"""Running an evaluation: the per-image cache (per_image.csv), decoding ahead, batching, progress.

`per_image.csv` is both the record and the cache: one row per generation with its settings, its
text and the labels read from it, appended and flushed batch by batch. A resumed run reads it back
and generates only what is missing; a row cut short by an interruption is dropped and redone.
What is cached is the model's output (text, P(Yes)); the pred_* labels are derived again from it on
every run, so a changed labeler or threshold never leaves stale labels behind (labelling is cheap).
"""
from __future__ import annotations

import csv
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence, TextIO

import numpy as np

from evaluation.errors import UnreadableImage
from evaluation.manifest import Case, load_image
from evaluation.plan import SCORE_PROMPTS, SCORE_THRESHOLD, Plan, context_variant, fmt, generation_seed, template_of
from evaluation.reader import Reader, ReadRequest, Sampling
from prompts.context import ClinicalContext
from prompts.findings import FINDING_NAMES, PRIMARY_FINDINGS

PER_IMAGE = "per_image.csv"
# "context": "with"/"without" the case's clinical context in the prompt (the prompt variant)
KEY_FIELDS = ("case_id", "prompt", "context", "temperature", "top_p", "repeat", "base_seed", "max_new_tokens",
              "model", "model_revision", "dtype", "quantization", "kernel", "decode")
# "finish_reason": "length" marks a report cut at the token cap (its labels read an unfinished text)
COLUMNS = (KEY_FIELDS + ("row", "seed", "new_tokens", "finish_reason", "created", "text")
           + tuple(f"pred_{n}" for n in FINDING_NAMES) + tuple(f"score_{n}" for n in PRIMARY_FINDINGS)
           + ("complete",))   # last: a row cut short by an interruption lacks it


def row_key(row: Mapping[str, str]) -> tuple[str, ...]:
    """The cache key of a per_image.csv row: the case, every setting, and the model identity."""
    return tuple(str(row.get(k, "")) for k in KEY_FIELDS)


def set_predictions(row: dict[str, str], label_text: Callable[[str], Mapping[str, str]]) -> None:
    """Fill a row's pred_* from what the model produced: P(Yes) >= SCORE_THRESHOLD for the question
    prompts, ``label_text(text)`` (finding -> presence) for reports."""
    if row.get("prompt") in SCORE_PROMPTS:
        row.update({f"pred_{n}": "" for n in FINDING_NAMES})
        for name in PRIMARY_FINDINGS:
            v = row.get(f"score_{name}", "")
            if v:
                row[f"pred_{name}"] = "present" if float(v) >= SCORE_THRESHOLD else "absent"
        return
    presence = label_text(row.get("text", ""))
    row.update({f"pred_{n}": presence.get(n, "not_mentioned") for n in FINDING_NAMES})


def text_labeler(labeler: Callable[[str], object]) -> Callable[[str], dict[str, str]]:
    """``labeler`` (text -> prompts.Findings) as text -> {finding: presence}, memoised per text
    (repeats at low temperature often produce the same report)."""
    memo: dict[str, dict[str, str]] = {}

    def label_text(text: str) -> dict[str, str]:
        if text not in memo:
            memo[text] = {f.name: f.presence for f in labeler(text)}
        return memo[text]

    return label_text


class PerImageLog:
    """per_image.csv: read back on open (valid rows only, labels derived again, file rewritten clean),
    appended per batch.

    ``relabel(row)`` sets a read-back row's pred_* from its stored output; ``relabelled`` counts the
    rows whose labels it changed.
    """

    def __init__(self, path: Path, relabel: Callable[[dict[str, str]], None] | None = None):
        self.path = Path(path)
        self.rows: dict[tuple[str, ...], dict[str, str]] = {}
        self.relabelled = 0
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as f:
                try:
                    for r in csv.DictReader(f):
                        # a row cut short by an interruption lacks its last field(s)
                        if r.get("complete") == "1" and None not in r:
                            if relabel is not None:
                                before = [r.get(f"pred_{n}", "") for n in FINDING_NAMES]
                                relabel(r)
                                self.relabelled += before != [r[f"pred_{n}"] for n in FINDING_NAMES]
                            self.rows[row_key(r)] = r
                except csv.Error:
                    pass    # an unterminated quoted field at the end: the rows before it are kept
            tmp = self.path.with_suffix(".csv.tmp")
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS)
                w.writeheader()
                w.writerows(self.rows.values())
            os.replace(tmp, self.path)
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        if self._file.tell() == 0:
            self._writer.writeheader()

    def __contains__(self, key: tuple[str, ...]) -> bool:
        return key in self.rows

    def append(self, rows: Sequence[dict[str, str]]) -> None:
        for r in rows:
            r["complete"] = "1"
            self._writer.writerow(r)
            self.rows[row_key(r)] = r
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Progress:
    """A one-line progress report with rate and ETA, written to ``stream`` (stderr by default)."""

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "evaluate",
                 every_s: float = 1.0):
        self.total, self.done = total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.label, self.every_s = label, every_s
        self.started = self._last = time.monotonic()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self._write(now)

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = "--" if left != left else _duration(left)
        return (f"{self.label}: {self.done}/{self.total} model calls ({pct:.0f}%), "
                f"{rate:.2f}/s, elapsed {_duration(elapsed)}, ETA {eta}")

    def _write(self, now: float) -> None:
        end = "\r" if self._tty and self.done < self.total else "\n"
        self.stream.write(self.line(now) + end)
        self.stream.flush()


@dataclass
class RunLog:
    """What a run did: calls made now, rows reused from the cache (``relabelled``: of all rows read
    back, those whose labels changed when derived again), images that could not be read."""

    generated: int = 0
    reused: int = 0
    relabelled: int = 0
    unreadable: list[dict] = field(default_factory=list)


def run(cases: Sequence[Case], reader: Reader, plan: Plan, out_dir: str | Path, *,
        labeler: Callable[[str], object] | None = None, batch_size: int = 8, workers: int = 2,
        progress: TextIO | None = None) -> tuple[dict[tuple[str, ...], dict[str, str]], RunLog]:
    """Generate (or reuse) every planned output for every case; append them to per_image.csv.

    Parameters
    ----------
    cases
        The selected cases (``manifest.select_cases``).
    reader
        The model (``reader.open_reader`` or a test stand-in).
    plan
        Prompts, sampling settings, repeats, seed.
    out_dir
        Output folder; ``per_image.csv`` there is read back first (resume).
    labeler
        Report text -> ``prompts.Findings``; default ``prompts.extract_findings``. Also re-labels
        every report read back from per_image.csv.
    batch_size
        Images per model call (same settings), and images decoded ahead.
    workers
        Threads decoding images while the model runs.
    progress
        Stream for the progress line (stderr by default).

    Returns
    -------
    tuple
        (rows of this plan by cache key, RunLog). Images that cannot be read are listed in
        ``RunLog.unreadable`` (row, case_id, error, message) and the run goes on.
    """
    if labeler is None:
        from prompts import extract_findings as labeler
    label_text = text_labeler(labeler)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = PerImageLog(out_dir / PER_IMAGE, relabel=lambda row: set_predictions(row, label_text))
    ident = {k: fmt(reader.identity.get(k)) for k in ("name", "revision", "dtype", "quantization")}
    settings = plan.settings()

    def key_of(case: Case, s) -> tuple[str, ...]:
        prompt, t, p, r = s
        sampled = prompt not in SCORE_PROMPTS     # yes/no scores use neither a seed nor a token cap
        row = {"case_id": case.case_id, "prompt": prompt, "context": context_variant(prompt),
               "temperature": fmt(t), "top_p": fmt(p),
               "repeat": fmt(r), "base_seed": fmt(plan.seed) if sampled else "",
               "max_new_tokens": fmt(plan.max_new_tokens) if sampled else "",
               "model": ident["name"], "model_revision": ident["revision"], "dtype": ident["dtype"],
               "quantization": ident["quantization"],
               # the kernel and decode path (hf eager/static, torchao, vLLM) are part of the model's identity
               "kernel": str(ident.get("kernel") or ""), "decode": str(ident.get("decode") or "")}
        return row_key(row), row

    todo: list[tuple[Case, list]] = []
    wanted: list[tuple[str, ...]] = []
    runlog = RunLog(relabelled=log.relabelled)
    for case in cases:
        pending = []
        for s in settings:
            key, _ = key_of(case, s)
            wanted.append(key)
            if key in log:
                runlog.reused += 1
            else:
                pending.append(s)
        if pending:
            todo.append((case, pending))

    bar = Progress(sum(len(p) for _, p in todo), stream=progress)
    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
            ahead: deque[list[tuple[Case, list, Future]]] = deque()

            def submit(k: int) -> None:
                if k < len(chunks):
                    ahead.append([(c, p, pool.submit(load_image, c.path)) for c, p in chunks[k]])

            # decode the next chunk while the model works on this one; memory: two chunks of images
            submit(0)
            for k in range(len(chunks)):
                submit(k + 1)
                loaded = []
                for case, pending, fut in ahead.popleft():
                    try:
                        loaded.append((case, pending, fut.result()))          # (H, W) uint8
                    except UnreadableImage as exc:
                        runlog.unreadable.append({"row": case.row, "case_id": case.case_id,
                                                  "error": exc.code, "message": str(exc)})
                        bar.total -= len(pending)
                runlog.generated += _generate_chunk(loaded, reader, plan, key_of, label_text, bar, log.append)
    finally:
        log.close()
    return {k: log.rows[k] for k in wanted if k in log.rows}, runlog


def _generate_chunk(loaded, reader: Reader, plan: Plan, key_of, label_text, bar: Progress,
                    sink: Callable[[list[dict]], None]) -> int:
    """Run every pending setting for a chunk of decoded images; each model call's rows go to
    ``sink`` (per_image.csv) at once, so an interruption loses at most the call in flight."""
    from prompts import finding_questions, render

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    done = 0
    # group by setting so one model call carries several images with identical sampling
    by_setting: dict[tuple, list[tuple[Case, np.ndarray]]] = {}
    for case, pending, image in loaded:
        for s in pending:
            by_setting.setdefault(s, []).append((case, image))
    for s, items in by_setting.items():
        prompt_key, t, p, r = s
        # only the context arms see age/sex/indication; the others get an empty context, so that
        # report.v1 vs report_context.v1 vs the questions differ by prompt, not by information given
        with_context = context_variant(prompt_key) == "with"
        if prompt_key in SCORE_PROMPTS:
            for case, image in items:
                scores = reader.score(image, finding_questions(case.context if with_context else ClinicalContext()))
                key, row = key_of(case, s)
                row.update(row=str(case.row), seed="", new_tokens="", created=created, text="")
                for name in PRIMARY_FINDINGS:
                    prob = scores.get(name)
                    row[f"score_{name}"] = "" if prob is None else repr(float(prob))
                set_predictions(row, label_text)
                sink([row])
                done += 1
                bar.update(1)
            continue
        requests = []
        for case, image in items:
            requests.append(ReadRequest(
                case_id=case.case_id, repeat=r, image=image,
                prompt=render(template_of(prompt_key), case.context if with_context else ClinicalContext()),
                sampling=Sampling(temperature=t, top_p=p, max_new_tokens=plan.max_new_tokens,
                                  seed=generation_seed(plan.seed, case.case_id, prompt_key, t, p, r))))
        readings = reader.generate(requests)
        if len(readings) != len(requests):
            raise RuntimeError(f"the model returned {len(readings)} outputs for {len(requests)} requests")
        rows = []
        for req, (case, _), reading in zip(requests, items, readings):
            key, row = key_of(case, s)
            row.update(row=str(case.row), seed=str(req.sampling.seed), created=created, text=reading.text,
                       new_tokens=fmt(reading.new_tokens), finish_reason=reading.finish_reason or "")
            row.update({f"score_{n}": "" for n in PRIMARY_FINDINGS})
            set_predictions(row, label_text)
            rows.append(row)
        sink(rows)
        done += len(rows)
        bar.update(len(requests))
    return done


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
