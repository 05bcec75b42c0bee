"""Golden drafts: fixed inputs (fixed draft_id and issued time) -> the exact Bundle JSON.

Regenerate after an intended change with
``FHIR_MAPPING_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/fhir_mapping/test_golden.py``
and review the diff of tests/fhir_mapping/golden/ like code.
"""
from __future__ import annotations

import json
import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from prompts.findings import Finding

from fhir_mapping import build_draft
from tests.fhir_mapping.samples import draft_inputs, findings

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("FHIR_MAPPING_REGENERATE_GOLDEN") == "1"

CASES = {
    # order (LOINC + CPT), accession, patient, encounter; present/absent/uncertain, laterality, severity, scores
    "draft_full": lambda: draft_inputs(),
    # nothing but the study: no order, patient, accession or date; no coded findings
    "draft_minimal": lambda: draft_inputs(
        report_text="The image is non-diagnostic.", findings=findings(), accession_number=None, study_date=None,
        view_position=None, order=None, patient_reference=None, encounter_reference=None, scores=None,
        draft_id="golden-minimal",
        model={"name": "tiny-cxr-llava", "revision": None, "dtype": "float32", "quantization": "none",
               "prompt_id": "report", "prompt_version": "v1"}),
    # a normal study read from a two-view exam, issued in a non-UTC zone
    "draft_normal": lambda: draft_inputs(
        report_text="No acute cardiopulmonary abnormality. No pleural effusion or pneumothorax. "
                    "Sternotomy wires.",
        findings=findings(no_acute_finding="present", pleural_effusion="absent", pneumothorax="absent",
                          support_devices=Finding("support_devices", "present", "Sternotomy wires.")),
        order=None, view_count=2, study_date=date(2023, 12, 31), accession_number="ACC 7",
        issued=datetime(2024, 1, 1, 8, 0, 0, tzinfo=timezone(timedelta(hours=-5))), scores=None,
        draft_id="golden-normal"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, assert_valid_r4):
    bundle = build_draft(CASES[name]())
    assert_valid_r4(bundle)
    path = GOLDEN / f"{name}.json"
    if REGENERATE:
        path.write_text(json.dumps(bundle, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert path.is_file(), f"{path} is missing; run with FHIR_MAPPING_REGENERATE_GOLDEN=1 to write it"
    assert bundle == json.loads(path.read_text(encoding="utf-8")), (
        f"{name} differs from {path}; if the change is intended, regenerate with "
        "FHIR_MAPPING_REGENERATE_GOLDEN=1 and review the diff")
