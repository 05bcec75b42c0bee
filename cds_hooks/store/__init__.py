"""The service's one store: analyses, durable jobs, cards, feedback, JWT ids, workers and the audit trail.

``Store(target)`` opens an SQLite file (the embedded default) or, for ``postgresql://...``, a
PostgreSQL database shared by every API process and inference worker of a fleet. The SQL is the
same on both (``backends.Dialect`` adapts placeholders and the clock); schema changes are the
versioned migrations in ``migrations.py``, applied when the store opens.

Everything is keyed by DICOM UIDs, analysis keys and card uuids, never by patient identifiers:
analyses are stored without a Patient reference (the hook adds ``subject`` to its copy of the
DiagnosticReport), an accession number is kept only as a keyed hash (``accession_tag``), feedback
keeps no free text, and tokens are never passed in. Importable without Flask: the worker process
uses it as the API does.

Jobs: one row per analysis key (unique, so identical work runs once across every process). Workers
claim the most urgent runnable job with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite has one
writer at a time) and a lease they renew; a job whose lease ran out is claimed again by another
worker; attempts are bounded, then the job fails with its reason.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from cds_hooks.errors import CdsHooksError
from cds_hooks.store.backends import PostgresBackend, SqliteBackend, StoreUnavailable, open_backend
from cds_hooks.store.migrations import MIGRATIONS, statements

__all__ = ["Store", "StoreUnavailable", "JobState", "ClaimedJob", "QueueFull", "HOOK", "PRECOMPUTE",
           "BACKFILL", "PRIORITY_NAMES"]

# job priorities: lower runs first
HOOK, PRECOMPUTE, BACKFILL = 0, 1, 2
PRIORITY_NAMES = {HOOK: "hook", PRECOMPUTE: "precompute", BACKFILL: "backfill"}


class QueueFull(CdsHooksError):
    """The job queue holds as many waiting jobs as allowed (503 with Retry-After on ``/studies/*``)."""

    status = 503
    code = "queue-full"
    issue_code = "transient"


@dataclass(frozen=True)
class JobState:
    """Where one analysis key's work stands: ``queued``, ``running``, ``done`` or ``failed``."""

    key: str
    study_instance_uid: str
    status: str
    priority: int
    attempts: int
    max_attempts: int
    error: str | None
    analysis_id: str | None
    created: float
    updated: float
    kind: str = "analysis"          # analysis | sr (the DICOM SR of a stored analysis, written to the PACS)
    result: str | None = None       # what a finished non-analysis job produced (JSON text)

    def to_json(self) -> dict:
        out = {"status": self.status, "priority": PRIORITY_NAMES.get(self.priority, str(self.priority)),
               "attempts": self.attempts}
        if self.analysis_id:
            out["analysis_id"] = self.analysis_id
        if self.error:
            out["reason"] = self.error
        return out


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker holds the lease of: its key, what to do (``payload``) and the attempt number."""

    key: str
    payload: dict
    attempts: int
    max_attempts: int
    priority: int


_JOB_COLUMNS = ("key, study_instance_uid, status, priority, attempts, max_attempts, error, analysis_id, "
                "created, updated, kind, result")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Store:
    """The service's database (created and migrated on first use).

    Parameters
    ----------
    target : str or Path
        An SQLite file path, or a ``postgresql://`` URL.
    timeout_s : float
        How long a call waits for a connection or a lock before ``StoreUnavailable``.
    """

    def __init__(self, target: str | Path, *, timeout_s: float = 10.0):
        self.backend: SqliteBackend | PostgresBackend = open_backend(target, timeout_s=timeout_s)
        self.dialect = self.backend.dialect
        self._migrate()
        self.backend.created()

    @property
    def path(self) -> Path | None:
        """The SQLite file (None on PostgreSQL)."""
        return getattr(self.backend, "path", None)

    @property
    def kind(self) -> str:
        return self.dialect.name

    def describe(self) -> str:
        return self.backend.describe()

    def close(self) -> None:
        self.backend.close()

    # -- plumbing ---------------------------------------------------------------------------------
    def _migrate(self) -> None:
        real, blob = ("DOUBLE PRECISION", "BYTEA") if self.kind == "postgresql" else ("REAL", "BLOB")
        with self.backend.connection(write_lock=True) as db:
            if self.kind == "postgresql":
                db.execute("SELECT pg_advisory_xact_lock(7301)")     # one migrating process at a time
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                       "description TEXT NOT NULL, applied TEXT NOT NULL)")
            done = {row[0] for row in db.execute("SELECT version FROM schema_migrations").fetchall()}
            for version, description, script in MIGRATIONS:
                if version in done:
                    continue
                for stmt in statements(script, real, blob):
                    db.execute(stmt)
                db.execute(self.dialect.sql("INSERT INTO schema_migrations VALUES (?, ?, ?)"),
                           (version, description, _now_iso()))
        if self.kind == "sqlite":
            with self.backend.connection() as db:
                db.execute("PRAGMA journal_mode=WAL")    # persistent in the file: readers don't block the writer

    def schema_version(self) -> int:
        return self._rows("SELECT MAX(version) FROM schema_migrations")[0][0]

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self.backend.connection() as db:
            return db.execute(self.dialect.sql(sql), tuple(params)).fetchall()

    def _changes(self, sql: str, params: Iterable[Any] = ()) -> int:
        with self.backend.connection() as db:
            return db.execute(self.dialect.sql(sql), tuple(params)).rowcount

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        """Rows of one statement (``?`` placeholders, ``{now}``); for the service's own table modules."""
        return self._rows(sql, params)

    def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one statement; returns the rows changed."""
        return self._changes(sql, params)

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the database answers (readiness)."""
        self._rows("SELECT 1")

    # -- analyses -----------------------------------------------------------------------------
    def put_analysis(self, key: str, analysis: Any, *, prompt_key: str, model_key: str | None = None,
                     accession_tag: str | None = None) -> str:
        """Store an ``Analysis`` (its ``to_json()``) under its analysis key; the first one wins.

        Returns the analysis id stored under the key (this one, or the one stored first).
        """
        from cds_hooks.pipeline import model_key as identity_key

        body = analysis.to_json()
        self._changes(
            "INSERT INTO analyses (key, analysis_id, study_instance_uid, sop_instance_uid, model_key, prompt_key, "
            "context_key, created, body, accession_tag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO NOTHING",
            (key, analysis.analysis_id, analysis.study["study_instance_uid"],
             analysis.study["sop_instance_uid"], model_key or identity_key(analysis.model), prompt_key,
             analysis.context_key, _now_iso(), json.dumps(body, default=str), accession_tag))
        return self._rows("SELECT analysis_id FROM analyses WHERE key = ?", (key,))[0][0]

    def get_analysis(self, key: str) -> dict | None:
        """The stored analysis JSON for an analysis key, or None."""
        rows = self._rows("SELECT body FROM analyses WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def latest_for_instance(self, sop_instance_uid: str, identity: dict | str, prompt_key: str) -> dict | None:
        """The newest analysis of this instance by this model and prompt, whatever its context.

        The study-arrival clock analyses without clinical context; the hook then reuses it rather
        than running the model again for its own context. ``identity`` is a model identity dict or
        its ``pipeline.model_key``.
        """
        from cds_hooks.pipeline import model_key

        mk = identity if isinstance(identity, str) else model_key(identity)
        rows = self._rows(
            "SELECT body FROM analyses WHERE sop_instance_uid = ? AND model_key = ? AND prompt_key = ? "
            "ORDER BY created DESC LIMIT 1", (sop_instance_uid, mk, prompt_key))
        return json.loads(rows[0][0]) if rows else None

    def latest_for_study(self, *, model_key: str, prompt_key: str, study_instance_uid: str | None = None,
                         accession_tag: str | None = None) -> dict | None:
        """The newest analysis of a study found by its UID or its accession tag (no PACS needed)."""
        if study_instance_uid:
            where, value = "study_instance_uid = ?", study_instance_uid
        elif accession_tag:
            where, value = "accession_tag = ?", accession_tag
        else:
            return None
        rows = self._rows(f"SELECT body FROM analyses WHERE {where} AND model_key = ? AND prompt_key = ? "
                          "ORDER BY created DESC LIMIT 1", (value, model_key, prompt_key))
        return json.loads(rows[0][0]) if rows else None

    def get_by_id(self, analysis_id: str) -> dict | None:
        """The stored analysis JSON with this ``analysis_id``, or None."""
        rows = self._rows("SELECT body FROM analyses WHERE analysis_id = ?", (analysis_id,))
        return json.loads(rows[0][0]) if rows else None

    def count_analyses(self) -> int:
        return self._rows("SELECT COUNT(*) FROM analyses")[0][0]

    # -- jobs -----------------------------------------------------------------------------------------
    def enqueue(self, key: str, *, study_instance_uid: str, sop_instance_uid: str, payload: dict, priority: int,
                max_attempts: int = 3, max_queued: int | None = None, retry_failed_after_s: float = 300.0,
                kind: str = "analysis") -> JobState:
        """Queue the work of one analysis key, once: an existing job is returned (promoted to ``priority``
        when that is more urgent; a failed one is queued again after ``retry_failed_after_s``).

        Raises
        ------
        QueueFull
            A new job while ``max_queued`` jobs of this priority or a less urgent one wait.
        """
        with self.backend.connection(write_lock=True) as db:
            sql = self.dialect.sql
            lock = " FOR UPDATE" if self.kind == "postgresql" else ""
            # the database's clock decides whether a failure is old enough to retry (every process agrees)
            row = db.execute(sql(f"SELECT status, priority, updated <= {{now}} - ? FROM jobs WHERE key = ?{lock}"),
                             (float(retry_failed_after_s), key)).fetchone()
            if row is None:
                if max_queued is not None:
                    waiting = db.execute(sql("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND priority >= ?"),
                                         (priority,)).fetchone()[0]
                    if waiting >= max_queued:
                        raise QueueFull(f"{waiting} analyses are waiting; try again later")
                db.execute(sql(
                    "INSERT INTO jobs (key, study_instance_uid, sop_instance_uid, priority, status, payload, attempts, "
                    "max_attempts, available_at, created, updated, kind) VALUES (?, ?, ?, ?, 'queued', ?, 0, ?, {now}, "
                    "{now}, {now}, ?) ON CONFLICT (key) DO NOTHING"),
                    (key, study_instance_uid, sop_instance_uid, priority, json.dumps(payload), max_attempts, kind))
            else:
                status, current, cooled_down = row
                if status == "failed" and cooled_down:
                    db.execute(sql("UPDATE jobs SET status = 'queued', attempts = 0, error = NULL, priority = ?, "
                                   "available_at = {now}, updated = {now}, payload = ? WHERE key = ?"),
                               (priority, json.dumps(payload), key))
                elif status in ("queued", "running") and priority < current:
                    db.execute(sql("UPDATE jobs SET priority = ?, updated = {now} WHERE key = ?"), (priority, key))
            found = db.execute(sql(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE key = ?"), (key,)).fetchone()
        return JobState(*found)

    def job(self, key: str) -> JobState | None:
        rows = self._rows(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE key = ?", (key,))
        return JobState(*rows[0]) if rows else None

    def study_jobs(self, study_instance_uid: str) -> list[JobState]:
        """Every job of one study, most urgent and newest first."""
        rows = self._rows(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE study_instance_uid = ? "
                          "ORDER BY updated DESC", (study_instance_uid,))
        return [JobState(*r) for r in rows]

    def claim(self, worker_id: str, *, lease_s: float) -> ClaimedJob | None:
        """Take the most urgent runnable job (queued and due, or running with an expired lease)."""
        skip = " FOR UPDATE SKIP LOCKED" if self.kind == "postgresql" else ""
        while True:
            with self.backend.connection(write_lock=True) as db:
                sql = self.dialect.sql
                row = db.execute(sql(
                    "UPDATE jobs SET status = 'running', lease_owner = ?, lease_until = {now} + ?, "
                    "attempts = attempts + 1, updated = {now} WHERE key = (SELECT key FROM jobs WHERE "
                    "(status = 'queued' AND available_at <= {now}) OR (status = 'running' AND lease_until < {now}) "
                    f"ORDER BY priority, created LIMIT 1{skip}) "
                    "RETURNING key, payload, attempts, max_attempts, priority"),
                    (worker_id, float(lease_s))).fetchone()
                if row is None:
                    return None
                key, payload, attempts, max_attempts, priority = row
                if attempts <= max_attempts:
                    return ClaimedJob(key, json.loads(payload), attempts, max_attempts, priority)
                # its workers kept dying (or losing the lease) while running it: stop trying
                db.execute(sql("UPDATE jobs SET status = 'failed', lease_owner = NULL, lease_until = NULL, "
                               "error = ?, updated = {now} WHERE key = ?"),
                           (f"the analysis did not finish in {max_attempts} attempts (its worker stopped "
                            "or lost the lease each time)", key))

    def renew(self, key: str, worker_id: str, *, lease_s: float) -> bool:
        """Extend this worker's lease; False when the job is no longer this worker's."""
        return self._changes("UPDATE jobs SET lease_until = {now} + ?, updated = {now} WHERE key = ? AND "
                             "lease_owner = ? AND status = 'running'", (float(lease_s), key, worker_id)) == 1

    def complete(self, key: str, analysis: Any, *, prompt_key: str, model_key: str,
                 accession_tag: str | None = None) -> str:
        """Store the analysis (first one wins) and mark the job done; returns the stored analysis id."""
        analysis_id = self.put_analysis(key, analysis, prompt_key=prompt_key, model_key=model_key,
                                        accession_tag=accession_tag)
        self._changes("UPDATE jobs SET status = 'done', analysis_id = ?, error = NULL, lease_owner = NULL, "
                      "lease_until = NULL, updated = {now} WHERE key = ?", (analysis_id, key))
        return analysis_id

    def finish(self, key: str, result: dict) -> None:
        """Mark a non-analysis job done with what it produced (e.g. the SR's UIDs)."""
        self._changes("UPDATE jobs SET status = 'done', result = ?, error = NULL, lease_owner = NULL, "
                      "lease_until = NULL, updated = {now} WHERE key = ?", (json.dumps(result), key))

    def fail(self, key: str, worker_id: str, reason: str, *, retry: bool, delay_s: float = 0.0) -> str:
        """Record a failed attempt: queued again after ``delay_s`` while attempts remain and ``retry``,
        else ``failed`` with ``reason``. Returns the job's new status."""
        with self.backend.connection(write_lock=True) as db:
            sql = self.dialect.sql
            row = db.execute(sql("SELECT attempts, max_attempts FROM jobs WHERE key = ?"), (key,)).fetchone()
            if row is None:
                return "missing"
            again = retry and row[0] < row[1]
            db.execute(sql("UPDATE jobs SET status = ?, error = ?, lease_owner = NULL, lease_until = NULL, "
                           "available_at = {now} + ?, updated = {now} WHERE key = ?"),
                       ("queued" if again else "failed", reason[:500], float(delay_s), key))
        return "queued" if again else "failed"

    def release(self, key: str, worker_id: str) -> bool:
        """Give a claimed job back unfinished (graceful shutdown); the attempt does not count."""
        return self._changes("UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, "
                             "attempts = attempts - 1, updated = {now} WHERE key = ? AND lease_owner = ? AND "
                             "status = 'running'", (key, worker_id)) == 1

    def active_jobs(self) -> int:
        """Jobs queued or running."""
        return self._rows("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0]

    def queue_depth(self) -> dict[str, int]:
        """Waiting jobs by priority name (``hook``, ``precompute``, ``backfill``)."""
        rows = self._rows("SELECT priority, COUNT(*) FROM jobs WHERE status = 'queued' GROUP BY priority")
        out = {name: 0 for name in PRIORITY_NAMES.values()}
        for priority, count in rows:
            out[PRIORITY_NAMES.get(priority, str(priority))] = count
        return out

    # -- workers --------------------------------------------------------------------------------------
    def worker_seen(self, worker_id: str, model_key: str) -> None:
        """A worker's heartbeat (and registration)."""
        self._changes("INSERT INTO workers (worker_id, model_key, started, seen) VALUES (?, ?, {now}, {now}) "
                      "ON CONFLICT (worker_id) DO UPDATE SET seen = {now}, model_key = ?",
                      (worker_id, model_key, model_key))

    def worker_gone(self, worker_id: str) -> None:
        self._changes("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    def live_workers(self, max_age_s: float) -> int:
        """Workers whose last heartbeat is at most ``max_age_s`` old."""
        return self._rows("SELECT COUNT(*) FROM workers WHERE seen >= {now} - ?", (float(max_age_s),))[0][0]

    # -- instances no decoder can read ----------------------------------------------------------
    def mark_undecodable(self, sop_instance_uid: str, fingerprint: str, reason: str) -> None:
        self._changes("INSERT INTO undecodable VALUES (?, ?, ?, {now}) ON CONFLICT (sop_instance_uid) DO UPDATE "
                      "SET fingerprint = ?, reason = ?, at = {now}",
                      (sop_instance_uid, fingerprint, reason[:500], fingerprint, reason[:500]))

    def undecodable(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """``(fingerprint, reason)`` recorded for an instance that could not be decoded, or None."""
        rows = self._rows("SELECT fingerprint, reason FROM undecodable WHERE sop_instance_uid = ?",
                          (sop_instance_uid,))
        return (rows[0][0], rows[0][1]) if rows else None

    # -- cards and feedback ---------------------------------------------------------------------
    def put_card(self, card_uuid: str, *, service_id: str, analysis_id: str | None, kind: str,
                 findings: Iterable[str]) -> None:
        """Remember a card we sent (for feedback per finding)."""
        self._changes("INSERT INTO cards VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (card_uuid) DO NOTHING",
                      (card_uuid, service_id, analysis_id, kind, json.dumps(sorted(findings)), _now_iso()))

    def card(self, card_uuid: str) -> dict | None:
        rows = self._rows("SELECT service_id, analysis_id, kind, findings FROM cards WHERE card_uuid = ?",
                          (card_uuid,))
        if not rows:
            return None
        service_id, analysis_id, kind, findings = rows[0]
        return {"service_id": service_id, "analysis_id": analysis_id, "kind": kind,
                "findings": json.loads(findings)}

    def put_feedback(self, service_id: str, item: dict) -> bool:
        """Store one checked feedback item; False when the same item was stored before (idempotent)."""
        accepted = sorted(s["id"] for s in item.get("acceptedSuggestions") or ())
        reason = (item.get("overrideReason") or {}).get("reason") or {}
        identity = json.dumps([item["card"], item["outcome"], accepted, item["outcomeTimestamp"]])
        return self._changes(
            "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (hashlib.sha256(identity.encode()).hexdigest(), service_id, item["card"], item["outcome"],
             json.dumps(accepted), reason.get("system"), reason.get("code"),
             int(bool((item.get("overrideReason") or {}).get("userComment"))),
             item["outcomeTimestamp"], _now_iso())) == 1

    def count_feedback(self) -> int:
        return self._rows("SELECT COUNT(*) FROM feedback")[0][0]

    # -- JWT replay protection (shared by every process through the database) -----------------
    def remember_jti(self, iss: str, jti: str, exp: int) -> bool:
        """Record a token id; False if it was seen before (a replay).

        Raises
        ------
        StoreUnavailable
            The id could not be recorded (read-only or unreachable database): answered 503, not 401.
        """
        now = int(time.time())
        self._changes("DELETE FROM seen_jti WHERE exp < ?", (now - 3600,))
        return self._changes("INSERT INTO seen_jti VALUES (?, ?, ?) ON CONFLICT (iss, jti) DO NOTHING",
                             (iss, jti, int(exp))) == 1

    # -- audit ------------------------------------------------------------------------------------
    def audit(self, *, hook_instance: str, service_id: str, outcome: str, analysis_ids: Iterable[str],
              elapsed_ms: float) -> None:
        self._changes("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?)",
                      (_now_iso(), hook_instance, service_id, outcome, json.dumps(list(analysis_ids)),
                       round(elapsed_ms, 1)))
