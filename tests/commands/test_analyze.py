"""`cxr-cds analyze`: the whole pipeline without HTTP, on files and against a real Orthanc."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom import uid as uids

from cds_hooks.cli import main
from tests.support import synthetic_cxr as syn

TOKENS = ["--max-new-tokens", "6"]


def run_cli(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def analyze_json(model_dir: Path, *args) -> dict:
    result = run_cli("analyze", *args, "--model", model_dir, *TOKENS, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def diagnostic_report(bundle: dict) -> dict:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")


def test_file_gives_report_findings_and_a_valid_preliminary_ai_draft(tmp_path, tiny_model_dir, assert_valid_r4):
    ds = syn.make_cxr(view="PA", accession="ACC-CLI-1")
    path = syn.write(ds, tmp_path / "pa.dcm")

    out = analyze_json(tiny_model_dir, path)

    assert set(out) >= {"report", "findings", "fhir", "study", "model"}
    assert isinstance(out["report"], str)
    assert out["study"]["sop_instance_uid"] == ds.SOPInstanceUID
    assert out["study"]["study_instance_uid"] == ds.StudyInstanceUID
    assert out["model"]["prompt_id"] == "report_context" and out["model"]["prompt_version"] == "v1"
    assert {"name", "revision", "quantization"} <= set(out["model"])
    assert set(out["findings"]) >= {"atelectasis", "cardiomegaly", "consolidation", "edema",
                                    "pleural_effusion", "pneumothorax"}
    assert all("presence" in v and "evidence" in v for v in out["findings"].values())
    assert_valid_r4(out["fhir"])
    report = diagnostic_report(out["fhir"])
    assert report["status"] == "preliminary"
    assert report["conclusion"].startswith("AI-generated draft")
    assert any(s["code"] == "AIAST" for s in report["meta"]["security"])
    assert report["identifier"][0]["value"] == "ACC-CLI-1"
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{ds.StudyInstanceUID}"


def test_context_bundle_reaches_the_draft(tmp_path, tiny_model_dir, assert_valid_r4):
    path = syn.write(syn.make_cxr(view="AP"), tmp_path / "ap.dcm")
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p-1", "gender": "male", "birthDate": "1950-01-01"}},
        {"resource": {"resourceType": "ServiceRequest", "id": "sr-1", "status": "active", "intent": "order",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "36554-4"}]},
                      "subject": {"reference": "Patient/p-1"},
                      "reasonCode": [{"text": "Shortness of breath"}]}},
        {"resource": {"resourceType": "Condition", "id": "c-1",
                      "clinicalStatus": {"coding": [{"code": "active"}]}, "code": {"text": "COPD"}}},
    ]}
    context = tmp_path / "context.json"
    context.write_text(json.dumps(bundle))

    out = analyze_json(tiny_model_dir, path, "--context", context, "--scores")   # scores: an Observation per finding

    report = diagnostic_report(out["fhir"])
    assert report["subject"]["reference"] == "Patient/p-1"
    assert report["basedOn"][0]["reference"] == "ServiceRequest/sr-1"
    assert report["code"]["coding"][0]["code"] == "36554-4"
    assert out["study"]["view_position"] == "AP"
    assert_valid_r4(out["fhir"])
    # the contained Observations point at the same patient as the report
    observations = [r for r in report["contained"] if r["resourceType"] == "Observation"]
    assert observations and all(o["subject"] == {"reference": "Patient/p-1"} for o in observations)


def _bundle_for(tmp_path, *, mrn: str | None, accession: str | None) -> Path:
    patient = {"resourceType": "Patient", "id": "p-2", "gender": "female", "birthDate": "1960-01-01"}
    if mrn:
        patient["identifier"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                        "code": "MR"}]}, "value": mrn}]
    request = {"resourceType": "ServiceRequest", "id": "sr-2", "status": "active", "intent": "order",
               "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5"}]},
               "subject": {"reference": "Patient/p-2"}}
    if accession:
        request["identifier"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                        "code": "ACSN"}]}, "value": accession}]
    path = tmp_path / "context.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": patient}, {"resource": request}]}))
    return path


@pytest.mark.parametrize("mrn, accession, refused", [
    ("MRN-OTHER", None, "PatientID is not one of the context Patient's identifiers"),
    (None, "ACC-OTHER", "AccessionNumber is not the context order's"),
], ids=["another-patient", "another-order"])
def test_a_context_bundle_of_another_patient_or_order_is_refused(tmp_path, tiny_model_dir, mrn, accession, refused):
    ds = syn.make_cxr(view="PA", accession="ACC-CLI-9")
    ds.PatientID = "MRN-CLI-9"
    path = syn.write(ds, tmp_path / "pa.dcm")
    result = CliRunner().invoke(main, ["analyze", str(path), "--context", str(_bundle_for(
        tmp_path, mrn=mrn, accession=accession)), "--model", str(tiny_model_dir), *TOKENS, "--json"])
    assert result.exit_code == 1
    assert refused in result.output and "MRN-CLI-9" not in result.output and "ACC-CLI-9" not in result.output


def test_a_context_bundle_of_the_same_patient_and_order_is_used(tmp_path, tiny_model_dir):
    ds = syn.make_cxr(view="PA", accession="ACC-CLI-8")
    ds.PatientID = "MRN-CLI-8"
    path = syn.write(ds, tmp_path / "pa.dcm")
    out = analyze_json(tiny_model_dir, path, "--context", _bundle_for(tmp_path, mrn="MRN-CLI-8", accession="ACC-CLI-8"))
    assert diagnostic_report(out["fhir"])["subject"]["reference"] == "Patient/p-2"


LOSSLESS = [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian, uids.DeflatedExplicitVRLittleEndian,
            uids.RLELossless, uids.JPEG2000Lossless, uids.JPEGLSLossless, uids.JPEGLosslessSV1, uids.JPEGLossless]
LOSSY = [uids.JPEG2000, uids.JPEGLSNearLossless, uids.JPEGExtended12Bit, uids.JPEGBaseline8Bit]


@pytest.mark.parametrize("ts", LOSSLESS + LOSSY, ids=lambda t: uids.UID(t).name)
def test_every_transfer_syntax_runs_through_analyze(tmp_path, tiny_model_dir, assert_valid_r4, ts):
    ds = syn.make_cxr(view="PA", bits=8 if ts == uids.JPEGBaseline8Bit else 12)
    path = syn.write(syn.compress(ds, ts), tmp_path / "img.dcm")
    out = analyze_json(tiny_model_dir, path)
    assert out["study"]["sop_instance_uid"] == ds.SOPInstanceUID
    assert_valid_r4(out["fhir"])


@pytest.mark.parametrize("variant", ["mono1_16bit", "voi_lut", "rgb_sc", "multiframe", "no_view_position"])
def test_pixel_variants_run_through_analyze(tmp_path, tiny_model_dir, assert_valid_r4, variant):
    ds = {
        "mono1_16bit": lambda: syn.make_cxr(view="PA", photometric="MONOCHROME1", bits=16),
        "voi_lut": lambda: syn.make_cxr(view="PA", bits=16, voi_lut=True),
        "rgb_sc": lambda: syn.make_rgb_secondary_capture(),
        "multiframe": lambda: syn.make_multiframe(view="PA"),
        "no_view_position": lambda: syn.make_cxr(view=None, series_description="CHEST PA"),
    }[variant]()
    out = analyze_json(tiny_model_dir, syn.write(ds, tmp_path / "img.dcm"))
    assert out["study"]["sop_instance_uid"] == ds.SOPInstanceUID
    assert_valid_r4(out["fhir"])
    if variant == "multiframe":
        assert any("frame" in note for note in out["study"]["notes"]), out["study"]["notes"]


def test_a_longer_report_still_gives_a_schema_valid_draft(tmp_path, tiny_model_dir, assert_valid_r4):
    # random weights write random text; with more tokens it mentions findings and carries odd characters
    path = syn.write(syn.make_cxr(view="PA"), tmp_path / "pa.dcm")
    result = run_cli("analyze", path, "--model", tiny_model_dir, "--max-new-tokens", "96", "--json")
    assert result.exit_code == 0, result.output
    assert_valid_r4(json.loads(result.stdout)["fhir"])


def test_real_cr_chest_rg1(tiny_model_dir):
    from pydicom.data import get_testdata_file

    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        path = get_testdata_file(name)
        assert path, f"{name} missing: pip install pydicom-data"
        out = analyze_json(tiny_model_dir, path)
        assert out["study"]["view_position"] == "PA"
        assert out["study"]["modality"] == "CR"


REJECTED = {
    "lateral": (lambda: syn.make_cxr(view="LL"), "not a frontal chest radiograph"),
    "ct": (lambda: syn.make_ct(), "not a chest radiograph"),
    "truncated": (None, "truncated|corrupt|cannot"),
    "not_dicom": (None, "not DICOM|DICOM"),
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_inputs_give_one_line_error_without_traceback(tmp_path, tiny_model_dir, name):
    make, pattern = REJECTED[name]
    path = tmp_path / "bad.dcm"
    if name == "truncated":
        data = syn.to_bytes(syn.make_cxr(view="PA"))
        path.write_bytes(data[: len(data) // 2])
    elif name == "not_dicom":
        path.write_text("this is a text file, not an image\n")
    else:
        syn.write(make(), path)

    proc = subprocess.run([sys.executable, "-m", "cds_hooks", "analyze", str(path), "--model", str(tiny_model_dir),
                           "--json"], capture_output=True, text=True, timeout=300)

    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert re.search(pattern, lines[0], re.I), lines[0]
    assert proc.stdout == ""


def test_usage_errors_are_explained(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(main, ["analyze", "--model", str(tiny_model_dir)])
    assert result.exit_code == 1
    assert "give either a DICOM FILE or --dicomweb URL" in result.output
    result = CliRunner().invoke(main, ["analyze", "--dicomweb", "http://127.0.0.1:9/dicom-web"])
    assert result.exit_code == 1
    assert "--dicomweb needs --accession, --study-uid or --patient-id" in result.output
    bad = tmp_path / "ctx.json"
    bad.write_text('{"resourceType": "Patient"}')
    path = syn.write(syn.make_cxr(view="PA"), tmp_path / "pa.dcm")
    result = CliRunner().invoke(main, ["analyze", str(path), "--context", str(bad), "--model", str(tiny_model_dir)])
    assert result.exit_code == 1
    assert "is not a FHIR Bundle" in result.output


@pytest.mark.orthanc
def test_dicomweb_study_picks_the_pa_and_says_why(orthanc, tiny_model_dir, assert_valid_r4):
    study = syn.make_study(("LL", "PA"))
    orthanc.store(*study)
    pa = next(ds for ds in study if ds.ViewPosition == "PA")

    out = analyze_json(tiny_model_dir, "--dicomweb", orthanc.dicomweb_url, "--accession", pa.AccessionNumber)

    assert out["study"]["sop_instance_uid"] == pa.SOPInstanceUID
    selected = out["study"]["selected"]
    assert selected["sop_instance_uid"] == pa.SOPInstanceUID
    assert "PA" in selected["reason"]
    assert_valid_r4(out["fhir"])

    by_uid = analyze_json(tiny_model_dir, "--dicomweb", orthanc.dicomweb_url, "--study-uid", pa.StudyInstanceUID)
    assert by_uid["study"]["sop_instance_uid"] == pa.SOPInstanceUID
    by_patient = analyze_json(tiny_model_dir, "--dicomweb", orthanc.dicomweb_url, "--patient-id", pa.PatientID)
    assert by_patient["study"]["study_instance_uid"] == pa.StudyInstanceUID

    missing = run_cli("analyze", "--dicomweb", orthanc.dicomweb_url, "--accession", "NO-SUCH-ACC",
                      "--model", tiny_model_dir, "--json")
    assert missing.exit_code == 1
    assert "NO-SUCH-ACC" in missing.output


@pytest.mark.orthanc
def test_dicomweb_with_basic_auth_from_the_environment(tmp_path, tiny_model_dir, monkeypatch):
    from tests.support.orthanc import OrthancServer

    server = OrthancServer(tmp_path / "orthanc-auth", users={"ci": "ci-secret"})
    server.start()
    try:
        study = syn.make_study(("PA",))
        server.store(*study)
        args = ("--dicomweb", server.dicomweb_url, "--accession", study[0].AccessionNumber)
        refused = run_cli("analyze", *args, "--model", tiny_model_dir)
        assert refused.exit_code == 1
        assert "401" in refused.output or "credentials" in refused.output.lower(), refused.output
        monkeypatch.setenv("CXR_CDS_DICOMWEB_USERNAME", "ci")
        monkeypatch.setenv("CXR_CDS_DICOMWEB_PASSWORD", "ci-secret")
        out = analyze_json(tiny_model_dir, *args)
        assert out["study"]["sop_instance_uid"] == study[0].SOPInstanceUID
        assert "ci-secret" not in json.dumps(out)
    finally:
        server.stop()
