"""Manifest readers (our CSV, CheXpert, MIMIC-CXR, Indiana/OpenI XML) and image loading, on tiny fixtures."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from evaluation import ManifestError, UnreadableImage, load_image, read_manifest, select_cases
from evaluation.manifest import path_case_id

MIMIC_FILES = ("mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-metadata.csv")


def test_our_csv(data_dir):
    m = read_manifest(data_dir / "manifest.csv")
    assert m.layout == "csv"
    assert [c.case_id for c in m.cases] == ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"]
    c1, c2, c4 = m.cases[0], m.cases[1], m.cases[3]
    assert c1.path == data_dir / "images" / "case1.png"
    assert c1.labels == {"atelectasis": "absent", "cardiomegaly": "present", "consolidation": "absent",
                         "edema": "absent", "pleural_effusion": "present", "pneumothorax": "absent"}
    assert c2.labels["pneumothorax"] == "uncertain"
    assert c4.labels["cardiomegaly"] == "absent"                  # blank = not mentioned = absent
    assert (c1.context.age_years, c1.context.sex, c1.context.reason) == (67, "female", "shortness of breath")
    assert c2.context.reason is None and m.cases[4].context.sex == "unknown"
    assert m.findings == ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion",
                          "pneumothorax")
    [skipped] = m.skipped
    assert (skipped.row, skipped.case_id) == (9, "c9")
    assert "column 'cardiomegaly' holds 'maybe'; use present/absent/uncertain" in skipped.reason


def test_our_csv_report_column_is_labelled(tmp_path, data_dir):
    image = (data_dir / "images" / "case1.png").resolve()
    (tmp_path / "m.csv").write_text(
        "path,report,abnormal\n"
        f"{image},There is a large right pleural effusion. No pneumothorax.,1\n"
        "other.png,,0\n")
    m = read_manifest(tmp_path / "m.csv")
    [case] = m.cases
    assert case.path == image                                      # absolute paths kept
    assert case.labels["pleural_effusion"] == "present"
    assert case.labels["pneumothorax"] == "absent"
    assert case.labels["edema"] == "absent"                        # not mentioned -> absent
    assert case.abnormal == "present"
    assert case.reference_report.startswith("There is a large")
    assert m.skipped[0].reason == "no finding columns and the `report` cell is empty"


def test_na_leaves_the_finding_out_and_bad_age_skips(tmp_path):
    (tmp_path / "m.csv").write_text("path,edema,pneumothorax,age\na.png,NA,1,40\nb.png,0,0,old\n")
    m = read_manifest(tmp_path / "m.csv", images_root=tmp_path / "elsewhere")
    [case] = m.cases
    assert case.labels == {"pneumothorax": "present"}
    assert case.path == tmp_path / "elsewhere" / "a.png"
    assert m.skipped[0].reason == "age 'old' is not a number of years"


def test_chexpert_layout(data_dir):
    m = read_manifest(data_dir / "chexpert" / "CheXpert-v1.0-small" / "valid.csv")
    assert m.layout == "chexpert"
    first, second = m.cases
    # Path starts with the dataset folder: resolved against the manifest folder's parent
    assert first.path == data_dir / "chexpert" / "CheXpert-v1.0-small" / "valid" / "patient00001" / "study1" / \
        "view1_frontal.jpg"
    assert first.path.is_file()
    assert first.labels["cardiomegaly"] == "present" and first.labels["consolidation"] == "uncertain"
    assert first.labels["atelectasis"] == "absent" and first.labels["pneumothorax"] == "absent"
    assert first.labels["support_devices"] == "present" and first.labels["nodule_or_mass"] == "absent"
    assert (first.context.age_years, first.context.sex) == (73, "female")
    assert second.labels["no_acute_finding"] == "present" and second.context.age_years == 15
    [lateral] = m.skipped
    assert lateral.row == 2 and lateral.reason == "lateral view (only frontal images are evaluated)"


def test_mimic_layout_picks_the_pa_image_of_test_studies(data_dir):
    # the split file beside the labels puts s50414267 and s57375967 in test, s50771383 in train
    m = read_manifest(data_dir / "mimic" / "mimic-cxr-2.0.0-chexpert.csv")
    assert m.layout == "mimic"
    assert (m.split, m.split_source, m.split_excluded) == ("test", "mimic-cxr-2.0.0-split.csv", 1)
    [case] = m.cases
    assert case.case_id == "s50414267"
    assert case.path.name == "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg" and case.path.is_file()
    assert case.labels["no_acute_finding"] == "present" and case.labels["pleural_effusion"] == "absent"
    [skipped] = m.skipped
    assert (skipped.case_id, skipped.reason) == ("s57375967", "no PA/AP image for this study in the metadata CSV")


def test_mimic_other_splits(data_dir):
    labels = data_dir / "mimic" / "mimic-cxr-2.0.0-chexpert.csv"
    train = read_manifest(labels, split="train")
    assert [c.case_id for c in train.cases] == ["s50771383"] and train.skipped == ()
    assert train.cases[0].path.name == "b1c2d3e4-11111111-22222222-33333333-44444444.jpg"   # the AP image
    everything = read_manifest(labels, split="ALL")
    assert [c.case_id for c in everything.cases] == ["s50414267", "s50771383"]
    assert (everything.split, everything.split_source, everything.split_excluded) == ("all", None, 0)
    with pytest.raises(ManifestError, match=r"no study of mimic-cxr-2.0.0-split.csv is in the 'validate' split "
                                            r"\(its splits: test, train\); pass one of them or --split all"):
        read_manifest(labels, split="validate")


def test_mimic_split_file_under_images_root(tmp_path, data_dir):
    (tmp_path / "labels").mkdir()
    (tmp_path / "root").mkdir()
    for name in MIMIC_FILES:
        shutil.copy(data_dir / "mimic" / name, tmp_path / "labels")
    shutil.copy(data_dir / "mimic" / "mimic-cxr-2.0.0-split.csv", tmp_path / "root")
    m = read_manifest(tmp_path / "labels" / MIMIC_FILES[0], images_root=tmp_path / "root")
    assert [c.case_id for c in m.cases] == ["s50414267"] and m.split_excluded == 1


def test_mimic_without_split_file(tmp_path, data_dir):
    for name in MIMIC_FILES:
        shutil.copy(data_dir / "mimic" / name, tmp_path)
    m = read_manifest(tmp_path / MIMIC_FILES[0])                  # default: no filter when there is no file
    assert (m.split, m.split_source, len(m.cases)) == ("all", None, 2)
    with pytest.raises(ManifestError, match=r"--split test needs mimic-cxr-2.0.0-split.csv\(.gz\) .* next to "
                                            r"mimic-cxr-2.0.0-chexpert.csv or under .*; without it pass --split all"):
        read_manifest(tmp_path / MIMIC_FILES[0], split="test")


def test_mimic_split_file_without_split_column(tmp_path, data_dir):
    for name in MIMIC_FILES:
        shutil.copy(data_dir / "mimic" / name, tmp_path)
    (tmp_path / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id\nx,50414267\n")
    with pytest.raises(ManifestError, match="split file mimic-cxr-2.0.0-split.csv needs study_id and split columns; "
                                            "it has dicom_id, study_id"):
        read_manifest(tmp_path / MIMIC_FILES[0])


def test_our_csv_split_column(tmp_path):
    (tmp_path / "m.csv").write_text("id,path,edema,split\na,a.png,1,test\nb,b.png,0,train\nc,c.png,0, TEST\n")
    m = read_manifest(tmp_path / "m.csv")                         # default: test when the column is there
    assert [c.case_id for c in m.cases] == ["a", "c"]
    assert (m.split, m.split_source, m.split_excluded) == ("test", "split column", 1)
    assert [c.case_id for c in read_manifest(tmp_path / "m.csv", split="train").cases] == ["b"]
    assert len(read_manifest(tmp_path / "m.csv", split="all").cases) == 3
    with pytest.raises(ManifestError, match=r"no row of manifest .*m.csv is in the 'validate' split \(its `split` "
                                            r"column holds: test, train\); pass --split with one of them"):
        read_manifest(tmp_path / "m.csv", split="validate")


def test_split_without_split_information(tmp_path, data_dir):
    (tmp_path / "m.csv").write_text("path,edema\na.png,1\n")
    assert read_manifest(tmp_path / "m.csv").split == "all"
    with pytest.raises(ManifestError, match=r"--split test: manifest .*m.csv has no `split` column; add one"):
        read_manifest(tmp_path / "m.csv", split="test")
    with pytest.raises(ManifestError, match="--split test: the chexpert layout has no split information"):
        read_manifest(data_dir / "chexpert" / "CheXpert-v1.0-small" / "valid.csv", split="test")
    with pytest.raises(ManifestError, match="--split train: the openi layout has no split information"):
        read_manifest(data_dir / "openi", split="train")
    with pytest.raises(ManifestError, match="the split is empty; pass --split test"):
        read_manifest(tmp_path / "m.csv", split=" ")


def test_case_id_without_id_column_is_a_hash_of_the_relative_path(tmp_path):
    # site exports put MRNs and accession numbers in folder names: never use them as case ids
    (tmp_path / "m.csv").write_text(
        "path,edema\n"
        "MRN12345678/ACC0042/frontal.png,1\n"
        f"{tmp_path / 'MRN12345678' / 'ACC0042' / 'frontal.png'},0\n"       # the same image, absolute
        "MRN87654321/ACC0077/frontal.png,0\n"
        ",0\n")
    m = read_manifest(tmp_path / "m.csv")
    first, other = m.cases
    assert first.case_id == path_case_id("MRN12345678/ACC0042/frontal.png")
    assert first.case_id.startswith("img-") and len(first.case_id) == 16 and "MRN" not in first.case_id
    assert other.case_id != first.case_id
    assert first.path == tmp_path / "MRN12345678" / "ACC0042" / "frontal.png"
    duplicate, empty = m.skipped
    assert (duplicate.row, duplicate.case_id) == (2, first.case_id)
    assert duplicate.reason == f"case id {first.case_id} repeats row 1 (the same image path)"
    assert (empty.row, empty.case_id, empty.reason) == (4, None, "the `path` cell is empty")
    assert read_manifest(tmp_path / "m.csv").cases[0].case_id == first.case_id          # stable


def test_repeated_id_column_value_is_skipped(tmp_path):
    (tmp_path / "m.csv").write_text("id,path,edema\nx,a.png,1\nx,b.png,0\n")
    m = read_manifest(tmp_path / "m.csv")
    assert [c.case_id for c in m.cases] == ["x"]
    assert m.skipped[0].reason == "case id x repeats row 1"


def test_chexpert_case_ids_are_hashed(data_dir):
    m = read_manifest(data_dir / "chexpert" / "CheXpert-v1.0-small" / "valid.csv")
    assert m.cases[0].case_id == path_case_id("CheXpert-v1.0-small/valid/patient00001/study1/view1_frontal.jpg")
    assert all("patient" not in c.case_id for c in m.cases) and "patient" not in m.skipped[0].case_id


def test_mimic_without_metadata(tmp_path, data_dir):
    shutil.copy(data_dir / "mimic" / "mimic-cxr-2.0.0-chexpert.csv", tmp_path)
    with pytest.raises(ManifestError, match="need mimic-cxr-2.0.0-metadata.csv"):
        read_manifest(tmp_path / "mimic-cxr-2.0.0-chexpert.csv")


def test_openi_folder(data_dir):
    m = read_manifest(data_dir / "openi")
    assert m.layout == "openi"
    assert [c.case_id for c in m.cases] == ["CXR1", "CXR2"]
    normal, effusion = m.cases
    assert normal.path == data_dir / "openi" / "images" / "CXR1_1_IM-0001-3001.png"
    assert effusion.path.name == "CXR2_IM-0652-1001.png"              # the PA, not the lateral listed first
    assert normal.context.reason == "Positive TB test"
    assert normal.reference_report.startswith("FINDINGS: The cardiac silhouette")
    assert "IMPRESSION: Normal chest x-XXXX." in normal.reference_report
    assert effusion.labels["pleural_effusion"] == "present" and effusion.labels["pneumothorax"] == "absent"
    assert normal.labels["pneumothorax"] == "absent" and normal.labels["edema"] == "absent"
    reasons = {s.row: s.reason for s in m.skipped}
    assert reasons[3].startswith("not well-formed XML")
    assert reasons[4] == "no frontal parentImage in the report"


def test_openi_single_file(data_dir):
    m = read_manifest(data_dir / "openi" / "2.xml", images_root=data_dir / "openi" / "images")
    assert [c.case_id for c in m.cases] == ["CXR2"]


@pytest.mark.parametrize("content, message", [
    ("", "is empty; a manifest needs a header row"),
    ("file,edema\na.png,1\n", "cannot tell the layout of .*add a `path` column or pass --layout"),
])
def test_header_errors(tmp_path, content, message):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / "m.csv")


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest .*nope.csv does not exist"):
        read_manifest(tmp_path / "nope.csv")


def test_unknown_layout(data_dir):
    with pytest.raises(ManifestError, match="unknown manifest layout 'dicomdir'; choose one of auto, csv"):
        read_manifest(data_dir / "manifest.csv", layout="dicomdir")


def test_no_finding_columns(tmp_path):
    (tmp_path / "m.csv").write_text("path,age\na.png,3\n")
    with pytest.raises(ManifestError, match="has neither finding columns .* nor a `report` column"):
        read_manifest(tmp_path / "m.csv")


def test_no_path_column(tmp_path):
    (tmp_path / "m.csv").write_text("file,edema\na.png,1\n")
    with pytest.raises(ManifestError, match="has no `path` column; columns: file, edema"):
        read_manifest(tmp_path / "m.csv", layout="csv")


def test_chexpert_without_path_column(tmp_path):
    (tmp_path / "m.csv").write_text("Image,Edema\na.png,1\n")
    with pytest.raises(ManifestError, match="CheXpert manifest .* has no `Path` column"):
        read_manifest(tmp_path / "m.csv", layout="chexpert")


def test_no_usable_case(tmp_path):
    (tmp_path / "m.csv").write_text("path,edema\na.png,sometimes\n")
    with pytest.raises(ManifestError, match="has no usable case: row 1: column 'edema' holds 'sometimes'"):
        read_manifest(tmp_path / "m.csv")


def test_empty_openi_folder(tmp_path):
    with pytest.raises(ManifestError, match="holds no .xml report"):
        read_manifest(tmp_path)


def test_select_cases_by_age_and_limit(data_dir):
    cases = read_manifest(data_dir / "manifest.csv").cases
    assert [c.case_id for c in select_cases(cases, max_age=17)] == ["c3", "c4"]
    assert [c.case_id for c in select_cases(cases, min_age=60)] == ["c1", "c6"]
    assert [c.case_id for c in select_cases(cases, limit=2)] == ["c1", "c2"]


def test_load_png_jpeg_rgb_and_16bit(tmp_path, data_dir):
    png = load_image(data_dir / "images" / "case3.png")
    assert png.dtype == np.uint8 and png.shape == (12, 16) and int(png[0, 0]) == 30
    jpg = load_image(data_dir / "chexpert" / "CheXpert-v1.0-small" / "valid" / "patient00002" / "study1" /
                     "view1_frontal.jpg")
    assert jpg.shape == (12, 16) and abs(int(jpg.mean()) - 90) <= 1
    Image.fromarray(np.full((4, 5, 3), (255, 0, 0), np.uint8)).save(tmp_path / "rgb.png")
    assert load_image(tmp_path / "rgb.png").tolist()[0][0] == 76          # ITU-R 601 luma of pure red
    sixteen = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "deep.png").tolist() == [[0, 64], [128, 255]]


def test_load_dicom_goes_through_imaging(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"          # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.Rows, ds.Columns = 4, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(16, dtype=np.uint16) * 200).reshape(4, 4).tobytes()
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    pixels = load_image(tmp_path / "x.dcm")
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 4)
    assert pixels[0, 0] < pixels[3, 3]                                    # MONOCHROME2 order kept


def test_unreadable_images_name_only_the_file(tmp_path, data_dir):
    # the folders may hold MRNs / accession numbers: messages carry the file name only
    folder = tmp_path / "MRN12345678"
    folder.mkdir()
    with pytest.raises(UnreadableImage, match=r"^image missing.png not found$"):
        load_image(folder / "missing.png")
    shutil.copy(data_dir / "images" / "corrupt.png", folder)
    with pytest.raises(UnreadableImage, match="image corrupt.png is neither DICOM nor an image Pillow can read") as bad:
        load_image(folder / "corrupt.png")
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    with pytest.raises(UnreadableImage, match="image broken.dcm could not be decoded") as broken:
        load_image(folder / "broken.dcm")
    for exc in (bad, broken):
        assert "MRN12345678" not in str(exc.value) and str(tmp_path) not in str(exc.value)
