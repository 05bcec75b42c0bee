"""Issue 12: the service as a fleet on one real PostgreSQL: API processes (`cxr-cds serve`, no model) and
inference workers (`cxr-cds worker`, the tiny model) as real processes, a real Orthanc, stopped by PID.

- 20 identical hooks spread over two APIs run the model once; every card names the same stored analysis;
- a worker SIGKILLed in the middle of an analysis loses its lease and another worker finishes the job;
- an API process restarted while a hook is pending: the next call gets the draft;
- a precompute's 202 survives a full restart of every process.
"""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import psycopg
import pytest
import requests

from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import cxr_order, hook_request, patient
from tests.cds_hooks.review_links import link_target
from tests.support.fleet import Api, Worker, hanging_server

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

STUDIES = {name: f"1.2.826.0.1.3680043.8.498.66{n:05d}" for n, name in enumerate(
    ("burst", "killed", "restart", "durable"), start=1)}


@pytest.fixture(scope="module")
def fleet_env(orthanc, postgres, tiny_model_dir):
    from tests.support import synthetic_cxr as s

    for n, (name, uid) in enumerate(STUDIES.items()):
        datasets = s.make_study(("PA",), study_uid=uid, accession=f"ACCFLEET{n}", patient_id=f"MRNFLEET{n}",
                                study_date=date(2026, 11, 20 + n), rows=160, cols=128, seed=40 + n)
        orthanc.store(*datasets)
    url = postgres.create_database(f"fleet_{uuid.uuid4().hex[:10]}")
    return {"CXR_CDS_AUTH": "none", "CXR_CDS_DATABASE_URL": url, "CXR_CDS_DICOMWEB_URL": orthanc.dicomweb_url,
            "CXR_CDS_MODEL": str(tiny_model_dir), "CXR_CDS_DEVICE": "cpu", "CXR_CDS_QUANTIZATION": "none",
            "CXR_CDS_MAX_NEW_TOKENS": "16", "CXR_CDS_DEADLINE_S": "60", "CXR_CDS_JOB_LEASE_S": "3",
            "CXR_CDS_WORKER_HEARTBEAT_S": "1", "CXR_CDS_JOB_RETRY_DELAY_S": "0.5", "CXR_CDS_SCORES": "false"}


@pytest.fixture(scope="module")
def fleet(fleet_env, tmp_path_factory):
    work = tmp_path_factory.mktemp("fleet")
    procs = {"api1": Api("api1", fleet_env, work, workers=2), "api2": Api("api2", fleet_env, work),
             "w1": Worker("w1", fleet_env, work), "w2": Worker("w2", fleet_env, work)}
    try:
        for p in procs.values():
            p.start()
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def _sign(n: int) -> dict:
    return hook_request("order-sign", f"pat-fleet-{n}", [cxr_order(f"sr-fleet-{n}", f"pat-fleet-{n}",
                                                                   accession=f"ACCFLEET{n}")],
                        prefetch={"patient": patient(f"pat-fleet-{n}", f"MRNFLEET{n}")})


def _jobs(url: str, study_uid: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT status, attempts, lease_owner, analysis_id FROM jobs WHERE "
                            "study_instance_uid = %s", (study_uid,)).fetchall()


def _analyses(url: str, study_uid: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT COUNT(*) FROM analyses WHERE study_instance_uid = %s", (study_uid,)).fetchone()[0]


def _wait_done(api: Api, study_uid: str, timeout_s: float = 120.0) -> dict:
    end = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < end:
        r = requests.get(f"{api.url}/studies/{study_uid}", timeout=10)
        status = r.json() if r.status_code == 200 else {"http": r.status_code}
        if status.get("status") in ("done", "failed"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"study {study_uid} not done: {status}")


def test_twenty_identical_hooks_over_two_apis_run_the_model_once(fleet, fleet_env):
    apis = [fleet["api1"], fleet["api2"]]
    body = _sign(0)

    def call(i: int) -> dict:
        r = requests.post(f"{apis[i % 2].url}/cds-services/cxr-ai-order-sign", json={**body, "hookInstance":
                          str(uuid.uuid4())}, timeout=90)
        assert r.status_code == 200, r.text
        (card,) = check_response(r.json())
        return card

    with ThreadPoolExecutor(20) as pool:
        cards = list(pool.map(call, range(20)))
    assert {link_target(c) for c in cards} == {link_target(cards[0])}      # one stored analysis for everyone
    assert all(c["summary"].startswith("AI draft") for c in cards)
    jobs = _jobs(fleet_env["CXR_CDS_DATABASE_URL"], STUDIES["burst"])
    assert [(status, attempts) for status, attempts, _, _ in jobs] == [("done", 1)]    # the model ran once
    assert _analyses(fleet_env["CXR_CDS_DATABASE_URL"], STUDIES["burst"]) == 1
    # the draft is readable from the other API process too
    assert f"/review/{jobs[0][3]}" == link_target(cards[0])
    ready = requests.get(f"{apis[1].url}/readyz", timeout=10).json()
    assert ready["status"] == "ready" and ready["checks"]["worker"].endswith("alive")


def _hook_count(api: Api) -> float:
    text = requests.get(f"{api.url}/metrics", timeout=10).text
    lines = [ln for ln in text.splitlines() if ln.startswith('cxr_cds_hook_latency_seconds_count{hook="order-sign"}')]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_metrics_add_up_across_the_api_processes_of_an_instance(fleet):
    api = fleet["api1"]                              # two gunicorn worker processes behind one port
    before = _hook_count(api)
    empty = hook_request("order-sign", "pat-x", [], prefetch={"patient": patient("pat-x", "MRN-NONE")})
    for _ in range(20):                              # a new connection each: spread over both processes
        assert requests.post(f"{api.url}/cds-services/cxr-ai-order-sign", json={
            **empty, "hookInstance": str(uuid.uuid4())}, timeout=30).json() == {"cards": []}
    assert _hook_count(api) - before == 20
    waiting = requests.get(f"{api.url}/metrics", timeout=10).text
    assert 'cxr_cds_jobs_waiting{priority="hook"}' in waiting
    # the workers' own metrics: the model's latency and the analyses each one stored
    worker = requests.get(f"http://127.0.0.1:{fleet['w1'].metrics_port}/metrics", timeout=10).text
    assert "cxr_cds_model_latency_seconds_count" in worker and "cxr_cds_analyses_in_flight" in worker


def test_a_worker_killed_mid_analysis_loses_its_lease_and_another_finishes(fleet, fleet_env, tmp_path):
    db, uid = fleet_env["CXR_CDS_DATABASE_URL"], STUDIES["killed"]
    fleet["w2"].stop()                              # one worker only, and it hangs on the PACS: kill it mid-job
    listener, hanging_url = hanging_server()
    stuck = Worker("stuck", {**fleet_env, "CXR_CDS_DICOMWEB_URL": hanging_url, "CXR_CDS_DICOMWEB_TIMEOUT_S": "300"},
                   tmp_path, concurrency=1)
    fleet["w1"].stop()
    stuck.start()
    try:
        r = requests.post(f"{fleet['api1'].url}/studies/{uid}/analyze", timeout=30)
        assert r.status_code == 202 and r.headers["Location"].endswith(f"/studies/{uid}")
        end = time.monotonic() + 120
        while time.monotonic() < end:
            jobs = _jobs(db, uid)
            if jobs and jobs[0][0] == "running" and f":{stuck.pid}:" in (jobs[0][2] or ""):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the stuck worker never claimed the job: {_jobs(db, uid)}\n{stuck.log()[-2000:]}")
        stuck.kill()                                # SIGKILL: no chance to give the job back
    finally:
        stuck.kill()
        listener.close()
    fleet["w1"].start()
    fleet["w2"].start()
    status = _wait_done(fleet["api2"], uid)
    assert status["status"] == "done" and status["attempts"] == 2 and status["analysis_id"]
    assert _analyses(db, uid) == 1


def test_an_api_restarted_while_a_hook_is_pending_then_serves_the_draft(fleet, fleet_env, tmp_path):
    fleet["w1"].stop()
    fleet["w2"].stop()                              # nothing runs the job yet: the hook must be pending
    quick = Api("quick", {**fleet_env, "CXR_CDS_DEADLINE_S": "1"}, tmp_path).start()
    try:
        started = time.monotonic()
        r = requests.post(f"{quick.url}/cds-services/cxr-ai-order-sign", json=_sign(2), timeout=30)
        (card,) = check_response(r.json())
        assert "in preparation" in card["summary"] and time.monotonic() - started < 1 + 2.0
        quick.kill()
        quick.start()                               # a rolling restart of the API
        fleet["w1"].start()
        end = time.monotonic() + 120
        while time.monotonic() < end:
            r = requests.post(f"{quick.url}/cds-services/cxr-ai-order-sign", json=_sign(2), timeout=30)
            (card,) = check_response(r.json())
            if card["summary"].startswith("AI draft"):
                break
            time.sleep(0.5)
        assert card["summary"].startswith("AI draft"), card["summary"]
    finally:
        quick.stop()
        fleet["w2"].start()


def test_a_precompute_survives_a_full_restart_of_every_process(fleet, fleet_env):
    uid = STUDIES["durable"]
    for name in ("w1", "w2"):
        fleet[name].stop()
    r = requests.post(f"{fleet['api1'].url}/studies/{uid}/analyze", timeout=30)
    assert r.status_code == 202
    assert requests.get(f"{fleet['api2'].url}/studies/{uid}", timeout=10).json()["status"] == "queued"
    for p in fleet.values():                        # every process goes down, abruptly
        p.kill()
    for p in fleet.values():
        p.start()
    status = _wait_done(fleet["api2"], uid)
    assert status["status"] == "done" and status["attempts"] == 1
    assert status["draft"].endswith(f"/drafts/{status['analysis_id']}")
