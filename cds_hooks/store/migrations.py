"""Versioned schema migrations, applied in order at start-up; ``schema_migrations`` records each.

Never edit a released migration: add the next one. Version 1 is the schema of the first release
(``CREATE ... IF NOT EXISTS``, so a database made before migrations existed is adopted as it is).
``{real}`` is the dialect's floating-point type. Concurrent start-ups are safe: on PostgreSQL an
advisory lock serialises them; on SQLite ``BEGIN IMMEDIATE`` does.
"""
from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "analyses, cards, feedback, JWT ids, audit", """
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
    elapsed_ms {real} NOT NULL
);
"""),
    (2, "durable jobs, workers, undecodable instances, study lookup without the PACS", """
CREATE TABLE jobs (
    key TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    priority INTEGER NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    available_at {real} NOT NULL,
    lease_owner TEXT,
    lease_until {real},
    error TEXT,
    analysis_id TEXT,
    created {real} NOT NULL,
    updated {real} NOT NULL,
    kind TEXT NOT NULL DEFAULT 'analysis',
    result TEXT
);
CREATE INDEX jobs_claim ON jobs (status, priority, available_at);
CREATE INDEX jobs_study ON jobs (study_instance_uid);
CREATE TABLE workers (
    worker_id TEXT PRIMARY KEY,
    model_key TEXT NOT NULL,
    started {real} NOT NULL,
    seen {real} NOT NULL
);
CREATE TABLE undecodable (
    sop_instance_uid TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    reason TEXT NOT NULL,
    at {real} NOT NULL
);
ALTER TABLE analyses ADD COLUMN accession_tag TEXT;
CREATE INDEX analyses_study ON analyses (study_instance_uid);
CREATE INDEX analyses_accession ON analyses (accession_tag);
"""),
    (3, "the review page: renditions, link context, verdicts per finding, decisions", """
CREATE TABLE review_renditions (
    analysis_id TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    body {blob} NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE review_links (
    card_uuid TEXT PRIMARY KEY,
    analysis_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE review_verdicts (
    card_uuid TEXT NOT NULL,
    analysis_id TEXT NOT NULL,
    finding TEXT NOT NULL,
    verdict TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX review_verdicts_analysis ON review_verdicts (analysis_id, created);
CREATE TABLE review_decisions (
    card_uuid TEXT NOT NULL,
    analysis_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason_code TEXT,
    has_comment INTEGER NOT NULL,
    edited INTEGER NOT NULL,
    report_text TEXT,
    write_back TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX review_decisions_analysis ON review_decisions (analysis_id, created);
"""),
)


def statements(script: str, real: str, blob: str) -> list[str]:
    """The script's statements (split on ``;`` at line ends; no literal holds one)."""
    text = script.replace("{real}", real).replace("{blob}", blob)
    return [s.strip() for s in text.split(";\n") if s.strip()]
