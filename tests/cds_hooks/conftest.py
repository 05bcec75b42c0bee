"""Fixtures for the CDS Hooks service: synthetic studies in a folder, the tiny model, apps, keys, servers."""
from __future__ import annotations

import copy
import threading
import time
import uuid
from datetime import date
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.cds_hooks.loopback import LoopbackServer

ORDERED_UID = "1.2.826.0.1.3680043.8.498.4200001"     # acquired; AccessionNumber ACC0042
PRIOR_UID = "1.2.826.0.1.3680043.8.498.7700001"       # pat-77's only study (a prior), 2025-01-10
LATERAL_UID = "1.2.826.0.1.3680043.8.498.9900001"     # lateral only: no frontal image
PATIENT_NAME = "Testpatient^Jane"


def patient(pid: str, mrn: str, birth: str = "1961-04-02") -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "Testpatient", "given": ["Jane"]}],
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "MR"}]},
                            "system": "urn:oid:1.2.3.4.5", "value": mrn}],
            "gender": "female", "birthDate": birth}


def cxr_order(sr_id: str, pid: str, *, accession: str | None = None, status: str = "draft",
              code: tuple[str, str] = ("http://www.ama-assn.org/go/cpt", "71046")) -> dict:
    sr = {"resourceType": "ServiceRequest", "id": sr_id, "status": status, "intent": "original-order",
          "code": {"coding": [{"system": code[0], "code": code[1]}], "text": "XR chest PA and lateral"},
          "subject": {"reference": f"Patient/{pid}"},
          "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "49727002",
                                      "display": "Cough"}]}]}
    if accession:
        sr["identifier"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                  "code": "ACSN"}]}, "value": accession}]
    return sr


def hook_request(hook: str, pid: str, orders: list[dict], *, selections: list[str] | None = None,
                 prefetch: dict | None = None, **top) -> dict:
    context = {"userId": "Practitioner/dr-1", "patientId": pid}
    if hook != "patient-view":
        context["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": o} for o in orders]}
    if selections is not None:
        context["selections"] = selections
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, **top}
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


# --- the three requests of CDS_HOOKS.md section 7.2 (A, B, C), verbatim ------------------------------------
EXAMPLE_A = {
    "hook": "order-select", "hookInstance": "6f0a2c1e-9b7d-4e3a-8c55-0d1e2f3a4b5c",
    "fhirServer": "https://ehr.example.org/fhir/r4",
    "fhirAuthorization": {"access_token": "opaque-short-lived-token", "token_type": "Bearer", "expires_in": 30,
                          "scope": "patient/Patient.read patient/ImagingStudy.read", "subject": "cxr-ai-cds",
                          "patient": "pat-42"},
    "context": {
        "userId": "PractitionerRole/pr-7", "patientId": "pat-42", "encounterId": "enc-9",
        "selections": ["ServiceRequest/sr-cxr-1"],
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {
                "resourceType": "ServiceRequest", "id": "sr-cxr-1", "status": "draft", "intent": "order",
                "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005",
                                          "display": "Imaging"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5", "display": "XR Chest 2 Views"},
                                    {"system": "http://www.ama-assn.org/go/cpt", "code": "71046"}],
                         "text": "XR chest PA and lateral"},
                "subject": {"reference": "Patient/pat-42"}, "encounter": {"reference": "Encounter/enc-9"},
                "requester": {"reference": "PractitionerRole/pr-7"},
                "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "49727002",
                                            "display": "Cough"}]}]}},
            {"resource": {"resourceType": "MedicationRequest", "id": "mr-1", "status": "draft", "intent": "order",
                          "medicationCodeableConcept": {"text": "Amoxicillin 500 mg capsule"},
                          "subject": {"reference": "Patient/pat-42"}}}]}},
    "prefetch": {"patient": {
        "resourceType": "Patient", "id": "pat-42",
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                        "system": "urn:oid:1.2.3.4.5", "value": "MRN0042"}],
        "gender": "female", "birthDate": "1961-04-02"}},
}
EXAMPLE_B = {
    "hook": "order-sign", "hookInstance": "0b6e8f4a-2d1c-4a7e-9f3b-5c6d7e8f9a0b",
    "fhirServer": "https://ehr.example.org/fhir/r4",
    "context": {"userId": "Practitioner/dr-1", "patientId": "pat-42", "draftOrders": {
        "resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "ServiceRequest", "id": "sr-cxr-2", "status": "draft",
                          "intent": "original-order",
                          "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "71045",
                                               "display": "Radiologic examination, chest; single view"}]},
                          "subject": {"reference": "Patient/pat-42"}}},
            {"resource": {"resourceType": "ServiceRequest", "id": "sr-lab-1", "status": "draft",
                          "intent": "original-order",
                          "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2",
                                               "display": "CBC panel - Blood by Automated count"}]},
                          "subject": {"reference": "Patient/pat-42"}}}]}},
}
EXAMPLE_C = {
    "hookInstance": "c3d2e1f0-aaaa-4bbb-8ccc-123456789abc", "hook": "order-select",
    "fhirServer": "https://launch.smarthealthit.org/v/r2/fhir",
    "context": {"patientId": "smart-1288992", "userId": "Practitioner/COREPRACTITIONER1",
                "selections": ["ServiceRequest/example-request-id"],
                "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": {
                    "resourceType": "ServiceRequest", "id": "example-request-id", "status": "draft",
                    "intent": "plan", "code": {"coding": [{}]},
                    "subject": {"reference": "Patient/smart-1288992"}, "reasonCode": []}}]}},
}


@pytest.fixture
def examples():
    """Fresh copies of the section 7.2 requests."""
    return {"A": copy.deepcopy(EXAMPLE_A), "B": copy.deepcopy(EXAMPLE_B), "C": copy.deepcopy(EXAMPLE_C)}


@pytest.fixture(scope="session")
def study_folder(tmp_path_factory) -> Path:
    """A local DICOM folder: pat-42's acquired ordered study, pat-77's prior, pat-99's lateral-only study."""
    from tests.support import synthetic_cxr as s

    folder = tmp_path_factory.mktemp("dicom")
    studies = [
        s.make_study(("PA", "LL"), study_uid=ORDERED_UID, accession="ACC0042", patient_id="MRN0042",
                     study_date=date(2026, 11, 28), rows=192, cols=160),
        s.make_study(("PA",), study_uid=PRIOR_UID, accession="ACC0077OLD", patient_id="MRN0077",
                     study_date=date(2025, 1, 10), rows=192, cols=160, seed=5),
        s.make_study(("LL",), study_uid=LATERAL_UID, accession="ACC0099", patient_id="MRN0099",
                     study_date=date(2026, 11, 27), rows=192, cols=160, seed=9),
    ]
    for study in studies:
        for ds in study:
            ds.PatientName = PATIENT_NAME
            ds.PatientBirthDate = "19610402"
            s.write(ds, folder / f"{ds.SOPInstanceUID}.dcm")
    return folder


@pytest.fixture(scope="session")
def engine(tiny_model_dir):
    from model_runtime import ModelConfig, load

    return load(ModelConfig(model=str(tiny_model_dir), device="cpu"))


class CountingGenerate:
    """``GenerationRequest -> GenerationResult`` over the tiny engine, counting calls.

    ``gate`` (a threading.Event) holds every call until set: the model "is slow" for deadline tests.
    ``fail`` makes every call raise it (a model crash).
    """

    def __init__(self, engine):
        self.engine = engine
        self.calls = 0
        self.gate: threading.Event | None = None
        self.fail: Exception | None = None
        self._lock = threading.Lock()

    def __call__(self, request):
        with self._lock:
            self.calls += 1
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        return self.engine.generate([request])[0]


@pytest.fixture
def make_app(tmp_path, engine, study_folder):
    """``make_app(source=None, generate=None, db=None, store_timeout_s=10, **settings)`` -> app; closed after
    the test. ``store_timeout_s``: how long the store waits for a lock (short for outage tests)."""
    from cds_hooks.app import create_app
    from cds_hooks.runtime import Runtime, identity_dict
    from cds_hooks.settings import load_settings
    from cds_hooks.store import Store
    from imaging import FolderSource

    made = []

    def make(*, source=None, generate=None, db=None, store_timeout_s=10.0, **overrides):
        values = {"auth": "none", "db": db or tmp_path / f"cds-{len(made)}.sqlite3", "max_new_tokens": 12,
                  "public_url": "https://cds.example.org"}
        values.update(overrides)
        settings = load_settings(environ={}, **values)
        gen = generate or CountingGenerate(engine)
        runtime = Runtime(source=source or FolderSource(study_folder), generate=gen,
                          model_identity=identity_dict(engine.identity),
                          store=Store(settings.db, timeout_s=store_timeout_s))
        app = create_app(settings, runtime=runtime)
        app.generate = gen
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["cxr_cds"].close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def fhir_server():
    """A fake EHR FHIR endpoint on loopback; set ``.routes`` per test."""
    server = LoopbackServer()
    yield server
    server.close()


# --- JWT signing keys and tokens --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def keys():
    """ES384 and RS384 private keys with their public JWKs (kid es-1, rs-1) and a rotated ES key (es-2)."""
    es = ec.generate_private_key(ec.SECP384R1())
    es2 = ec.generate_private_key(ec.SECP384R1())
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(private, kid, alg):
        algo = jwt.algorithms.ECAlgorithm if alg.startswith("ES") else jwt.algorithms.RSAAlgorithm
        d = algo.to_jwk(private.public_key(), as_dict=True)
        d.update(kid=kid, alg=alg, use="sig")
        return d

    return {"es": (es, jwk(es, "es-1", "ES384")), "es2": (es2, jwk(es2, "es-2", "ES384")),
            "rs": (rs, jwk(rs, "rs-1", "RS384"))}


def mint(private, *, alg="ES384", kid="es-1", iss="https://ehr.example.org", aud, jku=None,
         exp_in=300, iat_in=0, jti=None, headers=None, **claims) -> str:
    now = int(time.time())
    payload = {"iss": iss, "aud": aud, "exp": now + exp_in, "iat": now + iat_in,
               "jti": jti or str(uuid.uuid4()), **claims}
    header = {"kid": kid, "typ": "JWT", **(headers or {})}
    if jku:
        header["jku"] = jku
    return jwt.encode(payload, private, algorithm=alg, headers=header)
