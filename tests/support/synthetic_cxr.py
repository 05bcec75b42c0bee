"""Synthetic chest radiographs (pydicom) for tests, the demo and benchmarks.

``make_cxr`` builds a realistic DX/CR dataset (the attributes a PACS and our selection rules look at)
around a procedural chest-like image: body, lungs, heart, spine, ribs, blur and noise. Helpers
compress it to every transfer syntax a PACS commonly stores (pydicom encoders, python-gdcm for the
JPEG family), and build whole studies, RGB secondary captures, multi-frame, CT and VOI-LUT variants.

Attribute layout condensed from ../shared/reference/IMAGING_FHIR.md §2.1. Synthetic patients only.
"""
from __future__ import annotations

import copy
import io
import os
import sys
import tempfile
import uuid
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid as uids
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
GSPS_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"

DEFAULT_DATE = date(2026, 11, 28)

# Every transfer syntax issue 4 item 5 asks us to decode -> (lossless?, how we make it).
TRANSFER_SYNTAXES: dict[str, bool] = {
    uids.ImplicitVRLittleEndian: True,
    uids.ExplicitVRLittleEndian: True,
    uids.DeflatedExplicitVRLittleEndian: True,
    uids.RLELossless: True,
    uids.JPEGBaseline8Bit: False,        # 8-bit data only
    uids.JPEGExtended12Bit: False,       # <= 12-bit data
    uids.JPEGLossless: True,             # Process 14 (.4.57)
    uids.JPEGLosslessSV1: True,          # .4.70
    uids.JPEGLSLossless: True,
    uids.JPEGLSNearLossless: False,
    uids.JPEG2000Lossless: True,
    uids.JPEG2000: False,
}


def _short_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:12].upper()   # SH/LO: at most 16 characters


# -- pixels ----------------------------------------------------------------------------------------
def _ellipse(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _box_blur(img: np.ndarray, k: int) -> np.ndarray:
    """Separable box blur of odd size ``k`` with edge padding (cumulative sums, no scipy)."""
    if k <= 1:
        return img
    r = k // 2
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(img, pad, mode="edge"), axis=axis)
        hi = np.take(c, np.arange(k, c.shape[axis]), axis=axis)
        lo = np.take(c, np.arange(0, c.shape[axis] - k), axis=axis)
        img = (hi - lo) / k
    return img


def chest_phantom(rows: int = 320, cols: int = 256, *, view: str | None = "PA", seed: int = 0) -> np.ndarray:
    """A procedural chest radiograph, (rows, cols) float32 in [0, 1], 1 = dense (white in MONOCHROME2)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:rows * 1j, -1:1:cols * 1j].astype(np.float32)
    img = np.full((rows, cols), 0.04, np.float32)            # air around the patient
    lateral = view is not None and view.upper() not in ("PA", "AP")
    if not lateral:
        body = _ellipse(yy, xx, 0.15, 0.0, 1.05, 0.88)
        img[body] = 0.55
        for side in (-1, 1):                                    # two lung fields
            lung = _ellipse(yy, xx, -0.05, side * 0.38, 0.62, 0.28) & (yy < 0.55)
            img[lung] = 0.18
        for k in range(9):                                      # posterior ribs: bright arcs over the lungs
            arc = np.abs(yy - (-0.62 + 0.12 * k + 0.22 * xx ** 2)) < 0.022
            img[arc & body & (np.abs(xx) > 0.08)] += 0.14
        img[(np.abs(xx) < 0.07) & body] = 0.78                  # spine / mediastinum
        heart = _ellipse(yy, xx, 0.30, 0.12, 0.24, 0.30)        # towards the image right (patient's left, PA)
        img[heart] = 0.35 + 0.45 * img[heart]                   # the spine shows faintly through the heart
        img[(yy > 0.55) & body] = 0.6                           # below the diaphragm
        for side in (-1, 1):                                    # clavicles
            cl = np.abs(yy - (-0.72 + 0.1 * np.abs(xx))) < 0.025
            img[cl & (np.abs(xx) < 0.6) & (side * xx > 0)] = 0.8
        if view is not None and view.upper() == "AP":
            img *= 0.95                                         # AP: slightly lower contrast (magnified heart not modelled)
    else:
        body = _ellipse(yy, xx, 0.1, 0.0, 1.05, 0.7)
        img[body] = 0.55
        img[_ellipse(yy, xx, -0.05, 0.05, 0.6, 0.45) & (yy < 0.5)] = 0.2     # superimposed lungs
        img[_ellipse(yy, xx, 0.3, -0.25, 0.25, 0.25)] = 0.6                 # heart, anterior
        img[(np.abs(xx - 0.55) < 0.08) & body] = 0.8                        # spine, posterior
        img[(yy > 0.5) & body] = 0.6
    img = _box_blur(img, max(1, (min(rows, cols) // 100) | 1))
    img += rng.normal(0.0, 0.01, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# -- datasets --------------------------------------------------------------------------------------
def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _da(value: date | str | None) -> str:
    if value is None:
        value = DEFAULT_DATE
    return value.strftime("%Y%m%d") if isinstance(value, date) else str(value)


def make_cxr(
    *,
    view: str | None = "PA",
    photometric: str = "MONOCHROME2",
    bits: int = 12,
    rows: int = 320,
    cols: int = 256,
    modality: str = "DX",
    accession: str | None = None,
    patient_id: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str | None = "",
    study_date: date | str | None = None,
    study_time: str = "093000",
    body_part: str | None = "CHEST",
    seed: int = 0,
    series_number: int = 1,
    instance_number: int = 1,
    windows: bool = True,
    voi_lut: bool = False,
    patient_orientation: list[str] | None = None,
    image_laterality: str | None = None,
    pixels: np.ndarray | None = None,
) -> Dataset:
    """A DX (or CR) chest radiograph dataset, Explicit VR Little Endian, uncompressed.

    Parameters
    ----------
    view
        ``ViewPosition`` ("PA", "AP", "LL", "RL", or a non-standard "LATERAL"); None omits it (and
        PatientOrientation unless given), as many PACS do.
    photometric
        "MONOCHROME2" (min = black) or "MONOCHROME1" (min = white; the stored values are inverted).
    bits
        BitsStored (8..16); BitsAllocated is 8 for 8-bit data, else 16.
    series_description
        "" means "CHEST <view>"; None omits the attribute.
    windows
        Two WindowCenter/Width pairs, the first a narrower "DEFAULT" window; False omits VOI.
    voi_lut
        Replace the windows with a VOI LUT Sequence (a gamma curve over the stored range).
    pixels
        A (rows, cols) float array in [0, 1] to use instead of the phantom (1 = dense).
    """
    if not 8 <= bits <= 16:
        raise ValueError(f"bits must be 8..16, got {bits}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    val = chest_phantom(rows, cols, view=view, seed=seed) if pixels is None else np.asarray(pixels, np.float32)
    rows, cols = val.shape
    maxv = (1 << bits) - 1
    if photometric == "MONOCHROME1":
        val = 1.0 - val                                    # MONOCHROME1: minimum stored value = white
    dtype = np.uint8 if bits == 8 else np.uint16
    arr = np.round(val * maxv).astype(dtype)               # (rows, cols) stored values

    sop_class = CR_IMAGE_STORAGE if modality == "CR" else DX_PRESENTATION
    sop = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop)
    ds.preamble = b"\x00" * 128
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _da(study_date)
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study_time
    ds.AccessionNumber = accession or _short_id("ACC")
    ds.Modality = modality
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "SYNTHETIC"
    ds.ReferringPhysicianName = "REF^DOCTOR"
    ds.StudyDescription = "XR CHEST"
    if series_description == "":
        series_description = f"CHEST {view}" if view else "CHEST"
    if series_description is not None:
        ds.SeriesDescription = series_description
    pc = Dataset()
    pc.CodeValue, pc.CodingSchemeDesignator, pc.CodeMeaning = "36643-5", "LN", "XR Chest 2 Views"
    ds.ProcedureCodeSequence = Sequence([pc])
    ds.PatientName = "SYNTHETIC^CHEST"
    ds.PatientID = patient_id or _short_id("PAT")
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view is not None:
        ds.ViewPosition = view
    if patient_orientation is None and view is not None:
        patient_orientation = ["L", "F"] if view.upper() in ("PA", "AP") else ["P", "F"]
    if patient_orientation is not None:
        ds.PatientOrientation = patient_orientation
    if image_laterality is not None:
        ds.ImageLaterality = image_laterality
    ds.KVP = 120
    ds.DistanceSourceToDetector = 1800
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.139, 0.139]
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME2" else -1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    if voi_lut:
        ds.VOILUTSequence = Sequence([_gamma_voi_lut(maxv)])
    elif windows:
        def stored(v: float) -> int:   # a display-space centre expressed in stored values
            return int(round(maxv - v if photometric == "MONOCHROME1" else v))
        ds.WindowCenter = [stored(maxv * 0.45), stored(maxv * 0.5)]
        ds.WindowWidth = [int(maxv * 0.6), maxv]
        ds.WindowCenterWidthExplanation = ["DEFAULT", "FULL"]
        ds.VOILUTFunction = "LINEAR"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    return ds


def _gamma_voi_lut(maxv: int) -> Dataset:
    """A VOI LUT item mapping every stored value 0..maxv through a gamma 0.7 curve to 16-bit output."""
    item = Dataset()
    n = maxv + 1                                            # one entry per stored value: covers the range
    x = np.linspace(0.0, 1.0, n)
    lut = np.round(65535 * x ** 0.7).astype(np.uint16)
    # LUTDescriptor: [entries (0 means 65536), first mapped stored value, bits per entry]
    item.LUTDescriptor = [n if n < 65536 else 0, 0, 16]
    item.LUTExplanation = "GAMMA 0.7"
    # OW, not US: 65536 US values exceed the 64 kB an explicit-VR US element can hold
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    return item


def make_study(
    views: tuple[str | None, ...] = ("PA", "LL"),
    *,
    study_uid: str | None = None,
    accession: str | None = None,
    patient_id: str | None = None,
    study_date: date | str | None = None,
    **kwargs,
) -> list[Dataset]:
    """One study, one series per view (same StudyInstanceUID, AccessionNumber, PatientID)."""
    study_uid = study_uid or generate_uid()
    accession = accession or _short_id("ACC")
    patient_id = patient_id or _short_id("PAT")
    seed = kwargs.pop("seed", 0)
    return [
        make_cxr(view=view, study_uid=study_uid, accession=accession, patient_id=patient_id,
                 study_date=study_date, series_number=i + 1, seed=seed + i, **kwargs)
        for i, view in enumerate(views)
    ]


def make_rgb_secondary_capture(*, study_uid: str | None = None, rows: int = 160, cols: int = 128,
                               modality: str = "OT", **kwargs) -> Dataset:
    """An RGB Secondary Capture of a chest (e.g. a screenshot or a scanned film), 8-bit, interleaved."""
    base = make_cxr(study_uid=study_uid, rows=rows, cols=cols, bits=8, windows=False, **kwargs)
    gray = base.pixel_array                                 # (rows, cols) uint8
    rgb = np.stack([gray, gray, gray], axis=-1).copy()      # (rows, cols, 3) uint8
    rgb[:8, :8] = (255, 0, 0)                               # a red burned-in marker, like a screenshot
    ds = base
    sop = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SC_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.Modality = modality
    ds.ConversionType = "WSD"
    for kw in ("PresentationIntentType", "PixelIntensityRelationship", "PixelIntensityRelationshipSign",
               "RescaleIntercept", "RescaleSlope", "RescaleType", "PresentationLUTShape"):
        if kw in ds:
            del ds[kw]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = rgb.tobytes()
    ds["PixelData"].VR = "OB"
    return ds


def make_multiframe(frames: int = 3, **kwargs) -> Dataset:
    """A DX dataset with ``frames`` frames (frame k is the phantom with seed + k)."""
    ds = make_cxr(**kwargs)
    bits = int(ds.BitsStored)
    maxv = (1 << bits) - 1
    rows, cols = int(ds.Rows), int(ds.Columns)
    stack = [ds.pixel_array]
    for k in range(1, frames):
        val = chest_phantom(rows, cols, view=kwargs.get("view", "PA"), seed=kwargs.get("seed", 0) + k) * 0.5
        stack.append(np.round(val * maxv).astype(ds.pixel_array.dtype))
    arr = np.stack(stack)                                   # (frames, rows, cols)
    ds.NumberOfFrames = frames
    ds.PixelData = arr.tobytes()
    return ds


def make_ct(*, study_uid: str | None = None, accession: str | None = None, patient_id: str | None = None,
            rows: int = 64, cols: int = 64, localizer: bool = False, study_date: date | str | None = None) -> Dataset:
    """A small chest CT slice (signed 16-bit, HU via rescale), or its localizer (scout)."""
    sop = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop)
    ds.preamble = b"\x00" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if localizer else "AXIAL"]
    ds.StudyDate = ds.SeriesDate = _da(study_date)
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession or _short_id("ACC")
    ds.Modality = "CT"
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = "SCOUT" if localizer else "AXIAL 5MM"
    ds.PatientName = "SYNTHETIC^CT"
    ds.PatientID = patient_id or _short_id("PAT")
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 2 if localizer else 3
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    hu = np.where(_ellipse(*np.mgrid[-1:1:rows * 1j, -1:1:cols * 1j], 0, 0, 0.8, 0.9), 40, -1000)
    ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
    return ds


def make_presentation_state(*, study_uid: str, accession: str | None = None,
                            patient_id: str | None = None) -> Dataset:
    """A Grayscale Softcopy Presentation State (no pixels): must never be selected."""
    sop = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(GSPS_STORAGE, sop)
    ds.preamble = b"\x00" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = GSPS_STORAGE, sop
    ds.Modality = "PR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.StudyDate = _da(None)
    ds.StudyTime = "093000"
    ds.AccessionNumber = accession or _short_id("ACC")
    ds.PatientName = "SYNTHETIC^CHEST"
    ds.PatientID = patient_id or _short_id("PAT")
    ds.SeriesNumber, ds.InstanceNumber = 99, 1
    ds.ContentLabel = "ANNOTATIONS"
    ds.PresentationCreationDate, ds.PresentationCreationTime = _da(None), "093100"
    return ds


# -- encodings -------------------------------------------------------------------------------------
def _check_no_dl_on_path() -> None:
    # python-gdcm's gdcm.py runs `import dl` (a Python 2 leftover): any `dl` package or folder on
    # sys.path makes the import fail with "module 'dl' has no attribute 'RTLD_NOW'" (§2.2).
    for entry in sys.path:
        if (Path(entry or ".") / "dl").exists():
            raise RuntimeError(f"a directory named 'dl' in {entry or os.getcwd()} breaks `import gdcm`; "
                               "rename it or run from another directory")


def _roundtrip(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(to_bytes(ds)))


def _gdcm_transcode(ds: Dataset, ts_uid: str) -> Dataset:
    _check_no_dl_on_path()
    import gdcm

    target = {
        uids.JPEGBaseline8Bit: gdcm.TransferSyntax.JPEGBaselineProcess1,
        uids.JPEGExtended12Bit: gdcm.TransferSyntax.JPEGExtendedProcess2_4,
        uids.JPEGLossless: gdcm.TransferSyntax.JPEGLosslessProcess14,
        uids.JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
    }[ts_uid]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "in.dcm"), Path(tmp, "out.dcm")
        write(ds, src)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        if not reader.Read():
            raise RuntimeError(f"gdcm could not read {src}")
        image = reader.GetImage()
        twelve_bit = ts_uid == uids.JPEGExtended12Bit and int(ds.BitsStored) > 8
        if twelve_bit:
            # GDCM picks the JPEG precision from BitsAllocated and would write a 16-bit lossy SOF
            # (invalid; no decoder reads it). Claim 12 bits allocated while encoding, fix it after.
            fmt = image.GetPixelFormat()
            fmt.SetBitsAllocated(12)
            image.SetPixelFormat(fmt)
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(target))
        change.SetInput(image)
        if not change.Change():
            raise RuntimeError(f"gdcm could not encode {uids.UID(ts_uid).name}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(dst))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError(f"gdcm could not write {dst}")
        out = pydicom.dcmread(dst)
    if twelve_bit:
        out.BitsAllocated = 16
    if int(ds.SamplesPerPixel) == 3 and ts_uid in (uids.JPEGBaseline8Bit, uids.JPEGExtended12Bit):
        # GDCM's lossy JPEG converts RGB to YCbCr but leaves Photometric Interpretation at RGB; say
        # what the codestream really holds, as a modality would.
        out.PhotometricInterpretation = "YBR_FULL_422"
    return out


def compress(ds: Dataset, transfer_syntax_uid: str) -> Dataset:
    """A copy of ``ds`` stored with ``transfer_syntax_uid`` (UIDs unchanged), re-read from bytes.

    JPEG Baseline needs 8-bit data and JPEG Extended at most 12-bit (make the source accordingly).
    """
    ts = uids.UID(transfer_syntax_uid)
    src = copy.deepcopy(ds)
    if ts in (uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian, uids.DeflatedExplicitVRLittleEndian):
        src.file_meta.TransferSyntaxUID = ts
        return _roundtrip(src)
    if ts in (uids.JPEGBaseline8Bit, uids.JPEGExtended12Bit, uids.JPEGLossless, uids.JPEGLosslessSV1):
        return _gdcm_transcode(src, ts)
    kwargs: dict = {}
    if ts == uids.JPEG2000:
        kwargs["j2k_psnr"] = [70]                          # visually lossless; cr=20 ruins tiny test images
    elif ts == uids.JPEGLSNearLossless:
        kwargs["jls_error"] = 2
    src.compress(ts, generate_instance_uid=False, **kwargs)
    return _roundtrip(src)


def to_bytes(ds: Dataset) -> bytes:
    """Part 10 bytes with the 128-byte preamble and ``DICM`` (pydicom 3 omits them otherwise)."""
    buf = io.BytesIO()
    if getattr(ds, "preamble", None) is None:
        ds.preamble = b"\x00" * 128
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as a Part 10 file (preamble + ``DICM``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_bytes(ds))
    return path


# -- corrupt encodings that end an unprotected decoding process ------------------------------------
def make_corrupt_j2k(**kwargs) -> Dataset:
    """A JPEG 2000 Lossless CXR whose codestream is a SOC + SIZ marker and then 5000 fixed random bytes.

    pylibjpeg-openjpeg and Pillow refuse it with an error; GDCM (which pydicom tries first for JPEG
    2000) throws a C++ exception nothing catches: the process aborts (SIGABRT). ``kwargs`` go to
    :func:`make_cxr` (UIDs, accession ...).
    """
    from pydicom.encaps import encapsulate

    ds = compress(make_cxr(**kwargs), uids.JPEG2000Lossless)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + np.random.default_rng(0).bytes(5000)])
    return ds


def make_corrupt_rle(**kwargs) -> Dataset:
    """An RLE Lossless CXR whose segments have every 7th byte from offset 64 set to 0x7F (a literal run).

    pylibjpeg-rle's Rust decoder (pydicom's first choice for RLE) panics on it: pyo3's ``PanicException``
    is a ``BaseException``, so it passes every ``except Exception`` and ends the program. pydicom's own
    RLE decoder reports it as corrupt. ``kwargs`` go to :func:`make_cxr`.
    """
    from pydicom.encaps import encapsulate, generate_frames

    ds = compress(make_cxr(**kwargs), uids.RLELossless)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    for i in range(64, len(frame), 7):
        frame[i] = 0x7F
    ds.PixelData = encapsulate([bytes(frame)])
    return ds
