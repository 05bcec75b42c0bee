"""Fixed FHIR inputs and draft inputs for the fhir_mapping tests (written for this project)."""
from __future__ import annotations

import copy
from datetime import date, datetime, timezone
from typing import Any

from prompts.findings import FINDING_NAMES, Finding, Findings

from fhir_mapping import DraftInputs, OrderInfo

MODEL = {"name": "ECOFRI/CXR-LLAVA-v2", "revision": "0123abcd", "dtype": "bfloat16",
         "quantization": "4bit", "prompt_id": "report_context", "prompt_version": "v1"}
ISSUED = datetime(2024, 5, 2, 9, 30, 15, 123456, tzinfo=timezone.utc)
STUDY_UID = "1.2.826.0.1.3680043.8.498.12345"
MRN = "MRN0042"
PATIENT_NAME = "Quinonez-Testperson"
BIRTH_DATE = "1961-04-02"

PATIENT = {
    "resourceType": "Patient", "id": "pat-42",
    "identifier": [
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]},
         "system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-99-9999"},
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
         "system": "urn:oid:1.2.3.4.5", "value": MRN},
    ],
    "name": [{"family": PATIENT_NAME, "given": ["Ana"]}],
    "gender": "female", "birthDate": BIRTH_DATE,
}

SERVICE_REQUEST = {
    "resourceType": "ServiceRequest", "id": "sr-cxr-1", "status": "draft", "intent": "order",
    "identifier": [
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]},
         "value": "PLAC-77"},
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
         "system": "urn:oid:1.2.3.4.6", "value": "ACC-2024-0001"},
    ],
    "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5", "display": "XR Chest 2 Views"},
                        {"system": "http://www.ama-assn.org/go/cpt", "code": "71046"}],
             "text": "XR chest PA and lateral"},
    "subject": {"reference": "Patient/pat-42"},
    "encounter": {"reference": "Encounter/enc-9"},
    "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "49727002", "display": "Cough"}]},
                   {"text": "Fever for 3 days"}],
    "reasonReference": [{"reference": "Condition/c-9", "display": "Suspected pneumonia"}],
}

ENCOUNTER = {"resourceType": "Encounter", "id": "enc-9", "status": "in-progress",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER",
                       "display": "emergency"},
             "subject": {"reference": "Patient/pat-42"}}


def condition(display: str | None, *, clinical: Any = "active", verification: Any = "confirmed",
              subject: str = "Patient/pat-42", text: str | None = None, **extra) -> dict:
    """An R4 Condition; ``clinical``/``verification`` None leave the element out."""
    c: dict[str, Any] = {"resourceType": "Condition", "subject": {"reference": subject}}
    if clinical is not None:
        c["clinicalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": clinical}]}
    if verification is not None:
        c["verificationStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                               "code": verification}]}
    code: dict[str, Any] = {}
    if display:
        code["coding"] = [{"system": "http://snomed.info/sct", "code": "0", "display": display}]
    if text:
        code["text"] = text
    c["code"] = code
    c.update(extra)
    return c


def searchset(*resources: dict, outcome: dict | None = None) -> dict:
    entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    if outcome is not None:
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources), "entry": entries}


OPERATION_OUTCOME = {"resourceType": "OperationOutcome",
                     "issue": [{"severity": "error", "code": "processing", "diagnostics": "timeout"}]}


def findings(**spec: Finding | str) -> Findings:
    """All FINDING_NAMES, not_mentioned unless given (a presence string or a full Finding)."""
    items = []
    for name in FINDING_NAMES:
        value = spec.get(name)
        if isinstance(value, Finding):
            items.append(value)
        elif isinstance(value, str):
            items.append(Finding(name=name, presence=value))
        else:
            items.append(Finding(name=name))
    return Findings(tuple(items))


REPORT_TEXT = ("FINDINGS: Small left pleural effusion. No pneumothorax. Possible right lower lobe "
               "consolidation. Heart size is normal.\nIMPRESSION: Small left pleural effusion.")

FULL_FINDINGS = findings(
    pleural_effusion=Finding("pleural_effusion", "present", "Small left pleural effusion.", (10, 38),
                             "left", "small"),
    pneumothorax=Finding("pneumothorax", "absent", "No pneumothorax.", (39, 55)),
    consolidation=Finding("consolidation", "uncertain", "Possible right lower lobe consolidation.",
                          (56, 96), "right", None),
    cardiomegaly=Finding("cardiomegaly", "absent", "Heart size is normal.", (97, 118)),
    edema=Finding("edema", "present", "Moderate interstitial edema.", None, "bilateral", "moderate"),
)


def order_info(**overrides) -> OrderInfo:
    base = dict(id="sr-cxr-1",
                codings=(("http://loinc.org", "36643-5", "XR Chest 2 Views"),
                         ("http://www.ama-assn.org/go/cpt", "71046", None)),
                text="XR chest PA and lateral", accession_number="ACC-2024-0001",
                subject_reference="Patient/pat-42", encounter_reference="Encounter/enc-9",
                reason_texts=("Cough",), status="draft")
    base.update(overrides)
    return OrderInfo(**base)


def draft_inputs(**overrides) -> DraftInputs:
    """The full case: order, patient, encounter, mixed findings with laterality, severity and scores."""
    base = dict(report_text=REPORT_TEXT, findings=FULL_FINDINGS, study_instance_uid=STUDY_UID,
                accession_number="ACC-2024-0001", study_date=date(2024, 5, 2), view_position="PA",
                order=order_info(), patient_reference="Patient/pat-42", encounter_reference="Encounter/enc-9",
                model=dict(MODEL), issued=ISSUED, draft_id="golden-full",
                scores={"pleural_effusion": 0.9123, "pneumothorax": 0.0312, "atelectasis": 0.2})
    base.update(overrides)
    return DraftInputs(**base)


def deep(value):
    return copy.deepcopy(value)
