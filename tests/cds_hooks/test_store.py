"""The store on both databases: an SQLite file (embedded default) and a real PostgreSQL (a fleet)."""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from cds_hooks.store import BACKFILL, HOOK, PRECOMPUTE, QueueFull, Store, StoreUnavailable


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store(tmp_path / "store.sqlite3")
    else:
        pg = request.getfixturevalue("postgres")
        s = Store(pg.create_database(f"t_{uuid.uuid4().hex[:12]}"))
    yield s
    s.close()


def _enqueue(store, key, priority=PRECOMPUTE, **kw):
    return store.enqueue(key, study_instance_uid="1.2.3", sop_instance_uid=f"1.2.3.{key}", payload={"k": key},
                         priority=priority, **kw)


def test_migrations_are_versioned_and_applied_once(store):
    assert store.schema_version() == 3
    again = Store(store.backend.url if store.kind == "postgresql" else store.path)   # a second process starting
    assert again.schema_version() == 3
    again.close()


def test_one_job_per_key_and_the_most_urgent_priority_wins(store):
    first = _enqueue(store, "a", PRECOMPUTE)
    same = _enqueue(store, "a", PRECOMPUTE)
    assert first.key == same.key == "a" and first.status == "queued"
    assert _enqueue(store, "a", HOOK).priority == HOOK          # a hook promotes the queued precompute
    assert _enqueue(store, "a", BACKFILL).priority == HOOK      # never demoted
    assert store.active_jobs() == 1


def test_a_hook_job_is_claimed_before_twenty_precomputes(store):
    for i in range(20):
        _enqueue(store, f"p{i}", PRECOMPUTE)
    _enqueue(store, "hook", HOOK)
    job = store.claim("w1", lease_s=30)
    assert job.key == "hook" and job.priority == HOOK and job.attempts == 1
    assert store.claim("w1", lease_s=30).key == "p0"           # then oldest first


def test_concurrent_claims_never_take_the_same_job(store):
    for i in range(12):
        _enqueue(store, f"j{i}")
    taken: list[str] = []
    lock = threading.Lock()

    def worker(name):
        while (job := store.claim(name, lease_s=30)) is not None:
            with lock:
                taken.append(job.key)

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(f"j{i}" for i in range(12))


def test_an_expired_lease_is_claimed_by_another_worker_and_attempts_are_bounded(store):
    _enqueue(store, "x", max_attempts=2)
    assert store.claim("dead", lease_s=0.2).attempts == 1
    assert store.claim("live", lease_s=30) is None               # the lease still holds
    time.sleep(0.4)
    job = store.claim("live", lease_s=0.2)
    assert job.key == "x" and job.attempts == 2
    assert not store.renew("x", "dead", lease_s=30)             # the dead worker's lease is gone
    time.sleep(0.4)
    assert store.claim("third", lease_s=30) is None             # two lost attempts: failed, with the reason
    state = store.job("x")
    assert state.status == "failed" and "did not finish in 2 attempts" in state.error


def test_failed_attempts_are_retried_then_fail_with_the_reason(store):
    _enqueue(store, "f", max_attempts=2)
    store.claim("w", lease_s=30)
    assert store.fail("f", "w", "imaging:unavailable: PACS down", retry=True) == "queued"
    store.claim("w", lease_s=30)
    assert store.fail("f", "w", "imaging:unavailable: PACS down", retry=True) == "failed"
    assert store.job("f").error == "imaging:unavailable: PACS down"
    # a failed job is queued again when asked after the cool-down
    assert _enqueue(store, "f", retry_failed_after_s=0).status == "queued"


def test_a_released_job_is_not_an_attempt(store):
    _enqueue(store, "r")
    store.claim("w", lease_s=30)
    assert store.release("r", "w")
    job = store.claim("w2", lease_s=30)
    assert job.key == "r" and job.attempts == 1


def test_the_queue_is_bounded_for_precomputes_only(store):
    _enqueue(store, "q1", max_queued=2)
    _enqueue(store, "q2", max_queued=2)
    with pytest.raises(QueueFull, match="2 analyses are waiting"):
        _enqueue(store, "q3", max_queued=2)
    assert _enqueue(store, "hook", HOOK).status == "queued"      # hooks pass (they are asked with no bound)


def test_workers_heartbeat(store):
    store.worker_seen("w1", "m@r/none/float32")
    assert store.live_workers(30) == 1
    store.worker_gone("w1")
    assert store.live_workers(30) == 0


def test_jti_replay_is_shared_through_the_database(store):
    assert store.remember_jti("iss", "j1", int(time.time()) + 60)
    assert not store.remember_jti("iss", "j1", int(time.time()) + 60)


def test_a_database_that_cannot_be_written_answers_store_unavailable_then_recovers(tmp_path):
    import sqlite3

    path = tmp_path / "locked.sqlite3"
    store = Store(path, timeout_s=0.2)
    assert store.remember_jti("iss", "a", int(time.time()) + 60)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")           # another process holds the write lock (or the disk is read-only)
    try:
        with pytest.raises(StoreUnavailable, match="failed: OperationalError"):
            store.remember_jti("iss", "b", int(time.time()) + 60)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.remember_jti("iss", "c", int(time.time()) + 60)   # writable again: no restart needed


def test_a_deleted_database_file_stops_the_store_loudly(tmp_path):
    path = tmp_path / "gone.sqlite3"
    store = Store(path)
    store.ping()
    for p in tmp_path.glob("gone.sqlite3*"):
        p.unlink()
    with pytest.raises(StoreUnavailable, match="has disappeared; this process stops taking work"):
        store.ping()


def test_postgres_reconnects_after_the_server_drops_connections(postgres):
    import psycopg

    url = postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
    store = Store(url)
    store.ping()
    with psycopg.connect(postgres.url(), autocommit=True) as admin:   # e.g. a failover or a DBA's restart
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                      "pg_backend_pid()", (url.rsplit("/", 1)[1],))
    for _ in range(3):                         # the pool notices the dead connection and opens another
        try:
            store.ping()
            break
        except StoreUnavailable:
            time.sleep(0.2)
    store.ping()
    store.close()
