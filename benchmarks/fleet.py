"""The fleet against the embedded default, in one run: stored order-sign latency and jobs/s.

    .venv/bin/python benchmarks/fleet.py [--requests 100] [--studies 12] [--json out.json]

Starts a real Orthanc (DICOMweb), a real PostgreSQL (Debian's, a temporary cluster on loopback) and a
tiny random-weight model, then measures, with JWT auth on (a fresh ES384 token per call, verified by
the service):

- stored order-sign p50/p95 and requests/s at 1, 8 and 32 clients for the embedded default (one
  `cxr-cds serve` process, SQLite, jobs in-process), a fleet with 1 API process and a fleet with 2 API
  processes (`--workers 2`) on PostgreSQL, each as a ratio against the embedded default;
- jobs/s: ``--studies`` study-arrival precomputes (`POST /studies/{uid}/analyze`) from the first 202 to
  the last analysis stored, for the embedded default and for 1 and 2 `cxr-cds worker` processes.

Figures, not assertions. On a 2-core machine the workers share the cores with everything else: the
second worker shows the claim loop's overhead more than a second GPU's gain.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.hooks import ISSUER, Tokens, _load, _request  # noqa: E402
from tests.support import synthetic_cxr  # noqa: E402
from tests.support.fleet import Api, Worker  # noqa: E402
from tests.support.orthanc import OrthancServer  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402


def _wait_stored(api: Api, uids: list[str], timeout_s: float = 900.0) -> None:
    end = time.monotonic() + timeout_s
    pending = set(uids)
    while pending and time.monotonic() < end:
        for uid in list(pending):
            r = requests.get(f"{api.url}/studies/{uid}", headers=api.pacs_headers, timeout=30)
            if r.status_code == 200 and r.json().get("status") in ("done", "failed"):
                pending.discard(uid)
        time.sleep(0.05)
    if pending:
        raise RuntimeError(f"{len(pending)} studies not analysed in {timeout_s} s")


def _jobs_per_s(api: Api, uids: list[str]) -> float:
    t0 = time.perf_counter()
    for uid in uids:
        r = requests.post(f"{api.url}/studies/{uid}/analyze", headers=api.pacs_headers, timeout=30)
        assert r.status_code in (200, 202), r.text[:300]
    _wait_stored(api, uids)
    return round(len(uids) / (time.perf_counter() - t0), 2)


class _ForPublicUrl:
    """Tokens whose ``aud`` is the public URL the service checks, whatever loopback port the load goes to."""

    def __init__(self, tokens: Tokens, audience: str):
        self.tokens, self.audience = tokens, audience

    def headers(self, url: str, n: int) -> list[dict]:
        return self.tokens.headers(self.audience, n)


def _stored_latency(api: Api, tokens: Tokens, n: int) -> list[dict]:
    url = f"{api.url}/cds-services/cxr-ai-order-sign"
    signed = _ForPublicUrl(tokens, f"{api.public}/cds-services/cxr-ai-order-sign")
    body = _request("order-sign", "ACCFLEETB", "MRNFLEETB")
    first = requests.post(url, json=body, headers=signed.headers(url, 1)[0], timeout=300)
    assert first.json()["cards"], first.text[:300]
    return [_load(url, body, clients, n, signed) for clients in (1, 8, 32)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="requests per concurrency level")
    parser.add_argument("--studies", type=int, default=12, help="precomputes per jobs/s measurement")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from model_runtime import init_tiny

    with tempfile.TemporaryDirectory(prefix="cxr-fleet-bench-") as tmp, \
            OrthancServer(Path(tmp) / "orthanc") as orthanc:
        tmp = Path(tmp)
        pg = PostgresServer(Path(tempfile.mkdtemp(prefix="cxr-fleet-pg-"))).start()
        tokens = Tokens()
        procs: list = []
        try:
            orthanc.store(*synthetic_cxr.make_study(("PA",), accession="ACCFLEETB", patient_id="MRNFLEETB",
                                                    study_date=date(2026, 11, 28), seed=1))
            batches = {}
            for shape in ("embedded", "fleet1", "fleet2"):
                uids = []
                for i in range(args.studies):
                    uid = f"1.2.826.0.1.3680043.8.498.{90 + len(batches)}{i:04d}1"
                    orthanc.store(*synthetic_cxr.make_study(("PA",), study_uid=uid, accession=f"ACCJ{len(batches)}{i}",
                                                            patient_id="MRNJOBS", study_date=date(2026, 11, 1),
                                                            rows=192, cols=160, seed=100 + i))
                    uids.append(uid)
                batches[shape] = uids
            model_dir = init_tiny(tmp / "model", seed=0)
            public = "https://cds.bench.example.org"
            common = {"CXR_CDS_AUTH": "jwt", "CXR_CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks_url": tokens.jwks_url}}),
                      "CXR_CDS_PUBLIC_URL": public, "CXR_CDS_DICOMWEB_URL": orthanc.dicomweb_url,
                      "CXR_CDS_MODEL": str(model_dir), "CXR_CDS_DEVICE": "cpu", "CXR_CDS_QUANTIZATION": "none",
                      "CXR_CDS_MAX_NEW_TOKENS": "32", "CXR_CDS_DEADLINE_S": "120",
                      "CXR_CDS_PACS_TOKEN": "p" * 40, "CXR_CDS_LINK_SECRET": "l" * 40}
            fleet = {**common, "CXR_CDS_DATABASE_URL": pg.create_database("bench")}

            def api(name, env, workers=1):
                a = Api(name, env, tmp, workers=workers)
                a.public, a.pacs_headers = public, {"Authorization": "Bearer " + "p" * 40}
                procs.append(a)
                return a.start()

            results: dict = {"auth": "jwt", "requests_per_level": args.requests, "studies": args.studies}
            embedded = api("embedded", {**common, "CXR_CDS_DB": str(tmp / "embedded.sqlite3")})
            results["embedded"] = {"stored": _stored_latency(embedded, tokens, args.requests),
                                   "jobs_per_s": _jobs_per_s(embedded, batches["embedded"])}
            embedded.stop()

            w1 = Worker("w1", fleet, tmp, concurrency=4)
            procs.append(w1.start())
            one = api("api-1", fleet, workers=1)
            results["fleet_1_api"] = {"stored": _stored_latency(one, tokens, args.requests),
                                      "jobs_per_s_1_worker": _jobs_per_s(one, batches["fleet1"])}
            one.stop()
            two = api("api-2", fleet, workers=2)
            results["fleet_2_api"] = {"stored": _stored_latency(two, tokens, args.requests)}
            w2 = Worker("w2", fleet, tmp, concurrency=4)
            procs.append(w2.start())
            results["fleet_2_api"]["jobs_per_s_2_workers"] = _jobs_per_s(two, batches["fleet2"])

            base = {r["clients"]: r for r in results["embedded"]["stored"]}
            results["ratios_vs_embedded"] = {
                shape: {f"{r['clients']}_clients": {"p50": round(r["p50_ms"] / base[r["clients"]]["p50_ms"], 2),
                                                    "p95": round(r["p95_ms"] / base[r["clients"]]["p95_ms"], 2),
                                                    "req_per_s": round(r["req_per_s"] / base[r["clients"]]["req_per_s"], 2)}
                        for r in results[shape]["stored"]}
                for shape in ("fleet_1_api", "fleet_2_api")}
            e = results["embedded"]["jobs_per_s"]
            results["ratios_vs_embedded"]["jobs_per_s_1_worker"] = round(results["fleet_1_api"]["jobs_per_s_1_worker"] / e, 2)
            results["ratios_vs_embedded"]["jobs_per_s_2_workers"] = round(results["fleet_2_api"]["jobs_per_s_2_workers"] / e, 2)
        finally:
            for p in procs:
                p.stop()
            tokens.close()
            pg.stop()
            pg.remove()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
