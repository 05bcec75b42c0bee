"""`cxr-cds analyze ... --sr OUT.dcm` (the tiny model) and the CXR_CDS_PACS_WRITE setting."""
from __future__ import annotations

import json
import unicodedata

import pydicom
import pytest
from click.testing import CliRunner

from cds_hooks.cli import main
from cds_hooks.errors import SettingsError
from cds_hooks.settings import load_settings
from dicom_sr import sr_uids
from tests.dicom_sr.sr_tree import groups, tree
from tests.support import synthetic_cxr as syn


def analyze(*args) -> dict:
    result = CliRunner().invoke(main, ["analyze", *[str(a) for a in args], "--max-new-tokens", "6", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_analyze_file_writes_the_sr_of_the_same_analysis(tmp_path, tiny_model_dir, dciodvfy):
    ds = syn.make_cxr(view="PA", accession="ACC-CLI-SR")
    out_path = tmp_path / "draft-sr.dcm"

    out = analyze(syn.write(ds, tmp_path / "pa.dcm"), "--model", tiny_model_dir, "--scores", "--sr", out_path)

    sr = pydicom.dcmread(out_path)
    assert out["sr"]["path"] == str(out_path)
    assert (out["sr"]["series_instance_uid"], out["sr"]["sop_instance_uid"]) == sr_uids(out["analysis_id"])
    assert sr.SOPInstanceUID == out["sr"]["sop_instance_uid"]
    assert sr.StudyInstanceUID == ds.StudyInstanceUID and sr.PatientID == ds.PatientID
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    # the SR says what the JSON says: every score as a probability, the report verbatim
    by_name = groups(sr)
    for name, score in out["scores"].items():
        (num,) = [c for c in by_name[name].children if c.value_type == "NUM"]
        assert num.value[0] == pytest.approx(score)
    printable = "".join(ch for ch in out["report"]
                        if ch in "\n\r\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co")).strip()
    assert tree(sr).one(("C0034375", "UMLS")).one(("121070", "DCM")).value == (printable or "(no text generated)")
    errors, output = dciodvfy(out_path)
    assert errors == [], output


@pytest.mark.orthanc
def test_analyze_dicomweb_writes_the_sr_with_the_pacs_header(orthanc, tmp_path, tiny_model_dir):
    study = syn.make_study(("LL", "PA"))
    orthanc.store(*study)
    pa = next(ds for ds in study if ds.ViewPosition == "PA")
    out_path = tmp_path / "sr.dcm"

    out = analyze("--dicomweb", orthanc.dicomweb_url, "--accession", pa.AccessionNumber, "--model", tiny_model_dir,
                  "--sr", out_path)

    sr = pydicom.dcmread(out_path)
    assert out["study"]["sop_instance_uid"] == pa.SOPInstanceUID
    assert sr.StudyInstanceUID == pa.StudyInstanceUID and sr.PatientID == pa.PatientID
    images = {item.value for item in tree(sr).walk() if item.value_type == "IMAGE"}
    assert images == {(pa.SOPClassUID, pa.SOPInstanceUID)}


def test_analyze_sr_to_an_impossible_path_is_one_error_line(tmp_path, tiny_model_dir):
    path = syn.write(syn.make_cxr(view="PA"), tmp_path / "pa.dcm")
    result = CliRunner().invoke(main, ["analyze", str(path), "--model", str(tiny_model_dir), "--max-new-tokens",
                                       "2", "--sr", str(tmp_path / "no-such-dir" / "sr.dcm")])
    assert result.exit_code == 1
    assert "cannot write the SR to" in result.output and "Traceback" not in result.output


def test_pacs_write_setting():
    assert load_settings({"CXR_CDS_AUTH": "none"}).pacs_write == "off"
    assert load_settings({"CXR_CDS_AUTH": "none", "CXR_CDS_PACS_WRITE": " SR "}).pacs_write == "sr"
    with pytest.raises(SettingsError, match=r"CXR_CDS_PACS_WRITE='stow' is not valid: must be one of off, sr"):
        load_settings({"CXR_CDS_AUTH": "none", "CXR_CDS_PACS_WRITE": "stow"})
