"""The image header an SR needs: patient and study modules of the instance read, and its identity.

An SR in the same study must repeat the study's Patient, General Study and Patient Study module
attributes exactly (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2), and its image reference needs the read
instance's SOP Class and Instance UIDs. :func:`image_header` keeps those attributes, plus the few
image descriptors highdicom's Image Library entry reads, from any dataset of the instance: the WADO-RS
metadata a PACS returns, or a file's header. Nothing else (no pixels, no acquisition details) is kept.
"""
from __future__ import annotations

import copy

from pydicom.dataset import Dataset

from .errors import InvalidSrInput

PATIENT_MODULE = (
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "TypeOfPatientID",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription",
    "PatientBreedCodeSequence", "BreedRegistrationSequence", "ResponsiblePerson", "ResponsiblePersonRole",
    "ResponsibleOrganization",
)
GENERAL_STUDY_MODULE = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
)
PATIENT_STUDY_MODULE = ("PatientAge", "PatientSize", "PatientWeight")
#: The read instance: what the SR references, and what an Image Library entry (TID 1602/1603) describes.
INSTANCE = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality",
    "Rows", "Columns", "NumberOfFrames", "FrameOfReferenceUID", "PatientOrientation", "ImagerPixelSpacing",
    "PixelSpacing", "ViewPosition", "ImageLaterality",
)
#: Type 2 attributes an SR must carry even when the image's header lacks them (written empty).
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def _uid(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:            # a raw element pydicom cannot convert
        return None
    text = str(value or "").strip().rstrip("\x00").strip()
    return text if text and "\\" not in text else None


def image_header(ds: Dataset) -> Dataset:
    """The patient, study and instance attributes of ``ds`` that an SR about it needs.

    Parameters
    ----------
    ds
        The read instance's header: WADO-RS metadata (``ImageSource.retrieve_instance_metadata``) or
        a file read with ``stop_before_pixels=True``. The dataset itself is not changed.

    Returns
    -------
    pydicom.Dataset
        A new dataset with the kept attributes only; the Type 2 ones are present (empty when
        ``ds`` lacks them), as an SR in the study must carry them.

    Raises
    ------
    InvalidSrInput
        A Study, Series, SOP Instance or SOP Class UID is missing or multi-valued.
    """
    missing = [k for k in REQUIRED_UIDS if _uid(ds, k) is None]
    if missing:
        raise InvalidSrInput(f"the image header lacks {', '.join(missing)}; an SR must reference the exact "
                             "instance read: pass the instance's WADO-RS metadata or file header",
                             code="sr_header_incomplete")
    out = Dataset()
    for keyword in PATIENT_MODULE + GENERAL_STUDY_MODULE + PATIENT_STUDY_MODULE + INSTANCE:
        if keyword in ds:
            try:
                out.add(copy.deepcopy(ds.data_element(keyword)))
            except Exception:     # an element pydicom cannot convert: left out like an absent one
                continue
    for keyword in TYPE2:
        if keyword not in out:
            setattr(out, keyword, None)       # empty Type 2 value
    return out
