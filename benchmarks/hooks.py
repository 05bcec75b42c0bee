"""Hook latency through gunicorn on loopback, with results stored; and the burst case.

    .venv/bin/python benchmarks/hooks.py [--requests 200] [--auth jwt|none] [--json out.json]

Starts a real Orthanc (DICOMweb) with one synthetic study, a tiny random-weight model, and
`cxr-cds serve` (gunicorn, one worker process, threads). With ``--auth jwt`` (the default, as in
production) every call carries its own ES384 JWT (fresh ``jti``, ``aud`` = the invoked URL), signed
with a key the service fetches from a JWKS served on loopback, so the signature check and the
replay-store write are part of each measured request; tokens are minted before each timed run, so
minting is not measured. ``--auth none`` measures the service without them. The first order-sign call stores the
analysis; then p50/p95/p99 latency and requests/s of order-sign at 1, 8 and 32 concurrent
clients. Burst: 20 identical order-select calls at once for a second, unanalysed study, then the
number of model runs read from /metrics (target: 1). Target from issue 5: p95 <= 100 ms stored.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cds_hooks.loopback import LoopbackServer  # noqa: E402
from tests.support import synthetic_cxr  # noqa: E402
from tests.support.orthanc import OrthancServer  # noqa: E402

ISSUER = "https://bench-ehr.example.org"


class Tokens:
    """Mints one ES384 JWT per call (fresh jti) with a test key whose JWK Set is served on loopback."""

    def __init__(self):
        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec

        self._jwt = jwt
        self.key = ec.generate_private_key(ec.SECP384R1())
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update(kid="bench-1", alg="ES384", use="sig")
        self.server = LoopbackServer()
        self.server.routes["/jwks.json"] = (200, {"keys": [jwk]})
        self.jwks_url = f"{self.server.url}/jwks.json"

    def headers(self, url: str, n: int) -> list[dict]:
        """``n`` Authorization headers for calls to ``url``, each with its own jti."""
        now = int(time.time())
        return [{"Authorization": "Bearer " + self._jwt.encode(
            {"iss": ISSUER, "aud": url, "iat": now, "exp": now + 600, "jti": str(uuid.uuid4())},
            self.key, algorithm="ES384", headers={"kid": "bench-1", "typ": "JWT"})} for _ in range(n)]

    def close(self) -> None:
        self.server.close()


class NoTokens:
    def headers(self, url: str, n: int) -> list[dict]:
        return [{} for _ in range(n)]

    def close(self) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(hook: str, accession: str, mrn: str) -> dict:
    order = {"resourceType": "ServiceRequest", "id": "sr-1", "status": "draft", "intent": "original-order",
             "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "71046"}]},
             "subject": {"reference": "Patient/p-1"},
             "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                  "code": "ACSN"}]}, "value": accession}]}
    context = {"userId": "Practitioner/dr-1", "patientId": "p-1",
               "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": order}]}}
    if hook == "order-select":
        context["selections"] = ["ServiceRequest/sr-1"]
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": {"patient": {"resourceType": "Patient", "id": "p-1", "gender": "male",
                                     "birthDate": "1950-01-01", "identifier": [{"value": mrn}]}}}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _load(url: str, body: dict, clients: int, total: int, tokens) -> dict:
    local = threading.local()
    headers = tokens.headers(url, total)            # minted before the clock starts

    def one(i):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        t0 = time.perf_counter()
        r = session.post(url, json={**body, "hookInstance": str(uuid.uuid4())}, headers=headers[i], timeout=60)
        elapsed = (time.perf_counter() - t0) * 1000
        assert r.status_code == 200 and r.json()["cards"], r.text[:300]
        return elapsed

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, range(total)))
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": total, "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(_percentile(latencies, 0.95), 1), "p99_ms": round(_percentile(latencies, 0.99), 1),
            "req_per_s": round(total / wall, 1)}


METRICS_TOKEN = "bench-metrics-" + "m" * 32     # /metrics needs its bearer secret when JWT auth is on


def _metric(url: str, name: str) -> float:
    r = requests.get(f"{url}/metrics", timeout=5, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    r.raise_for_status()
    for line in r.text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--auth", choices=("jwt", "none"), default="jwt",
                        help="jwt: a fresh ES384 JWT per call, verified by the service (default); none: no auth")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from model_runtime import init_tiny

    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp, OrthancServer(Path(tmp) / "orthanc") as orthanc:
        tmp = Path(tmp)
        for accession, mrn, seed in (("ACCBENCH1", "MRNBENCH1", 1), ("ACCBURST1", "MRNBURST1", 2)):
            orthanc.store(*synthetic_cxr.make_study(("PA", "LL"), accession=accession, patient_id=mrn,
                                                    study_date=date(2026, 11, 28), seed=seed))
        model_dir = init_tiny(tmp / "model", seed=0)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        tokens = Tokens() if args.auth == "jwt" else NoTokens()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_CDS_")}
        env.update(CXR_CDS_AUTH=args.auth, CXR_CDS_DICOMWEB_URL=orthanc.dicomweb_url, CXR_CDS_MODEL=str(model_dir),
                   CXR_CDS_DEVICE="cpu", CXR_CDS_DB=str(tmp / "cds.sqlite3"), CXR_CDS_DEADLINE_S="60",
                   CXR_CDS_MAX_NEW_TOKENS="32", CXR_CDS_PUBLIC_URL=base, CXR_CDS_METRICS_TOKEN=METRICS_TOKEN)
        if args.auth == "jwt":
            env["CXR_CDS_TRUSTED_ISSUERS"] = json.dumps({ISSUER: {"jwks_url": tokens.jwks_url}})
        log = open(tmp / "serve.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "cds_hooks", "serve", "--port", str(port), "--threads", "32"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(400):
                try:
                    if requests.get(f"{base}/cds-services", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.25)
            sign = f"{base}/cds-services/cxr-ai-order-sign"
            body = _request("order-sign", "ACCBENCH1", "MRNBENCH1")
            t0 = time.perf_counter()
            first = requests.post(sign, json=body, headers=tokens.headers(sign, 1)[0], timeout=120)
            first_ms = round((time.perf_counter() - t0) * 1000, 1)
            assert first.json()["cards"][0].get("suggestions"), first.text[:500]
            results = {"auth": args.auth, "first_call_ms (computes and stores)": first_ms,
                       "stored": [_load(sign, body, c, args.requests, tokens) for c in (1, 8, 32)]}

            before = _metric(base, "cxr_cds_model_latency_seconds_count")
            burst_body = _request("order-select", "ACCBURST1", "MRNBURST1")
            select = f"{base}/cds-services/cxr-ai-order-select"
            burst_headers = tokens.headers(select, 20)
            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(lambda i: requests.post(select, json=burst_body, headers=burst_headers[i],
                                                                timeout=120), range(20)))
            while _metric(base, "cxr_cds_analyses_in_flight") > 0:
                time.sleep(0.1)
            results["burst"] = {"calls": 20, "all_200": all(a.status_code == 200 for a in answers),
                                "model_runs": int(_metric(base, "cxr_cds_model_latency_seconds_count") - before)}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            log.close()
            tokens.close()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
