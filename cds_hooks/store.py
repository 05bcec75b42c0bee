"""SQLite storage: stored analyses, the cards we sent, feedback, seen JWT ids, and the audit trail.

Everything is keyed by DICOM UIDs, analysis keys and card uuids, never by patient identifiers:
analyses are stored without a Patient reference (the hook adds ``subject`` to its copy of the
DiagnosticReport), feedback keeps no free text, and tokens are never passed in.
Each thread keeps its own connection (sqlite3 connections must not be shared across threads), and a
process re-opens after a fork. Reusing connections matters for latency: closing the last connection to
a WAL database checkpoints and deletes the WAL file, which cost ~1 ms per call when every call
opened and closed its own.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from cds_hooks.pipeline import model_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS analyses (
    key TEXT PRIMARY KEY,
    analysis_id TEXT NOT NULL UNIQUE,
    study_instance_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    model_key TEXT NOT NULL,
    prompt_key TEXT NOT NULL,
    context_key TEXT NOT NULL,
    created TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS analyses_instance ON analyses (sop_instance_uid, model_key, prompt_key);
CREATE TABLE IF NOT EXISTS cards (
    card_uuid TEXT PRIMARY KEY,
    service_id TEXT NOT NULL,
    analysis_id TEXT,
    kind TEXT NOT NULL,
    findings TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL,
    card_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    accepted_suggestions TEXT NOT NULL,
    reason_system TEXT,
    reason_code TEXT,
    has_comment INTEGER NOT NULL,
    outcome_timestamp TEXT NOT NULL,
    received TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_jti (
    iss TEXT NOT NULL,
    jti TEXT NOT NULL,
    exp INTEGER NOT NULL,
    PRIMARY KEY (iss, jti)
);
CREATE TABLE IF NOT EXISTS audit (
    at TEXT NOT NULL,
    hook_instance TEXT NOT NULL,
    service_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    analysis_ids TEXT NOT NULL,
    elapsed_ms REAL NOT NULL
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Store:
    """The service's SQLite database (created on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with closing(self._open()) as db:
            db.execute("PRAGMA journal_mode=WAL")        # persistent in the file: readers don't block the writer
            db.executescript(_SCHEMA)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)   # autocommit
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, and again in a forked child)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.db, local.pid = self._open(), os.getpid()
        return local.db

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        return self._connect().execute(sql, tuple(params)).fetchall()

    def _changes(self, sql: str, params: Iterable[Any] = ()) -> int:
        return self._connect().execute(sql, tuple(params)).rowcount

    # -- analyses -----------------------------------------------------------------------------
    def put_analysis(self, key: str, analysis: Any, *, prompt_key: str) -> None:
        """Store an ``Analysis`` (its ``to_json()``) under its analysis key; the first one wins."""
        body = analysis.to_json()
        self._changes(
            "INSERT OR IGNORE INTO analyses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, analysis.analysis_id, analysis.study["study_instance_uid"],
             analysis.study["sop_instance_uid"], model_key(analysis.model), prompt_key,
             analysis.context_key, _now(), json.dumps(body, default=str)))

    def get_analysis(self, key: str) -> dict | None:
        """The stored analysis JSON for an analysis key, or None."""
        rows = self._execute("SELECT body FROM analyses WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def latest_for_instance(self, sop_instance_uid: str, identity: dict, prompt_key: str) -> dict | None:
        """The newest analysis of this instance by this model and prompt, whatever its context.

        The study-arrival clock analyses without clinical context; the hook then reuses it rather
        than running the model again for its own context.
        """
        rows = self._execute(
            "SELECT body FROM analyses WHERE sop_instance_uid = ? AND model_key = ? AND prompt_key = ? "
            "ORDER BY created DESC LIMIT 1", (sop_instance_uid, model_key(identity), prompt_key))
        return json.loads(rows[0][0]) if rows else None

    def get_by_id(self, analysis_id: str) -> dict | None:
        """The stored analysis JSON with this ``analysis_id``, or None."""
        rows = self._execute("SELECT body FROM analyses WHERE analysis_id = ?", (analysis_id,))
        return json.loads(rows[0][0]) if rows else None

    def count_analyses(self) -> int:
        return self._execute("SELECT COUNT(*) FROM analyses")[0][0]

    # -- cards and feedback ---------------------------------------------------------------------
    def put_card(self, card_uuid: str, *, service_id: str, analysis_id: str | None, kind: str,
                 findings: Iterable[str]) -> None:
        """Remember a card we sent (for feedback per finding)."""
        self._changes("INSERT OR IGNORE INTO cards VALUES (?, ?, ?, ?, ?, ?)",
                      (card_uuid, service_id, analysis_id, kind, json.dumps(sorted(findings)), _now()))

    def card(self, card_uuid: str) -> dict | None:
        rows = self._execute("SELECT service_id, analysis_id, kind, findings FROM cards WHERE card_uuid = ?",
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
            "INSERT OR IGNORE INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (hashlib.sha256(identity.encode()).hexdigest(), service_id, item["card"], item["outcome"],
             json.dumps(accepted), reason.get("system"), reason.get("code"),
             int(bool((item.get("overrideReason") or {}).get("userComment"))),
             item["outcomeTimestamp"], _now())) == 1

    def count_feedback(self) -> int:
        return self._execute("SELECT COUNT(*) FROM feedback")[0][0]

    # -- JWT replay protection (shared by all worker processes through the file) ---------------
    def remember_jti(self, iss: str, jti: str, exp: int) -> bool:
        """Record a token id; False if it was seen before (a replay)."""
        now = int(time.time())
        db = self._connect()
        db.execute("DELETE FROM seen_jti WHERE exp < ?", (now - 3600,))
        return db.execute("INSERT OR IGNORE INTO seen_jti VALUES (?, ?, ?)",
                          (iss, jti, int(exp))).rowcount == 1

    # -- audit ------------------------------------------------------------------------------------
    def audit(self, *, hook_instance: str, service_id: str, outcome: str, analysis_ids: Iterable[str],
              elapsed_ms: float) -> None:
        self._changes("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?)",
                      (_now(), hook_instance, service_id, outcome, json.dumps(list(analysis_ids)),
                       round(elapsed_ms, 1)))
