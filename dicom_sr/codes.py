"""Every coded concept the SR writes, in one table (DICOM PS3.16 terms, pydicom ``Code`` values).

The finding codes are the SNOMED CT concepts fhir_mapping/codes.py uses for the same findings (see
../shared/reference/IMAGING_FHIR.md §5.3; copied, not imported: dicom_sr imports prompts and imaging
only). Value sets are the standard's where one exists, checked against pydicom's copy of PS3.16
(``pydicom.sr.codedict.codes.cid240`` ...):

* presence: CID 240 "Present-Absent". Note its Absent is SCT 272519000, not 2667000.
* severity: CID 3716 "Severity"; laterality: CID 244 "Laterality".
* probability: (122157, DCM, "Probability") in UCUM "1" (no units).

What no standard code covers (our yes/no method, sizes such as "small") uses the local coding scheme
``99CXRCDS`` (PS3.3 8.2: designators starting with "99" are private), declared in the SR's Coding
Scheme Identification Sequence.
"""
from __future__ import annotations

from typing import NamedTuple

from pydicom.sr.coding import Code

# --- Local coding scheme ----------------------------------------------------------------------------
LOCAL_SCHEME = "99CXRCDS"
LOCAL_SCHEME_NAME = "cxr-cds local codes"
LOCAL_SCHEME_ORGANIZATION = "cxr-cds"

# --- Document structure -----------------------------------------------------------------------------
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 10 container
REPORT_TEXT = Code("121070", "DCM", "Findings")           # the generated report, verbatim
COMMENT = Code("121106", "DCM", "Comment")                 # the AI-draft notice
PROBABILITY = Code("122157", "DCM", "Probability")
NO_UNITS = Code("1", "UCUM", "no units")
SEVERITY = Code("246112005", "SCT", "Severity")
ALGORITHM_FAMILY_AI = Code("123110", "DCM", "Artificial Intelligence")       # TID 4019 Algorithm Family
YES_PROBABILITY_METHOD = Code("yes-probability", LOCAL_SCHEME, "Model P(Yes) to the finding's yes/no question")
# Procedure reported when the image header has no ProcedureCodeSequence (TID 1500 "Procedure reported").
CHEST_IMAGING = Code("413815006", "SCT", "Chest imaging")

# --- Presence: CID 240 ------------------------------------------------------------------------------
PRESENCE = {
    "present": Code("52101004", "SCT", "Present"),
    "absent": Code("272519000", "SCT", "Absent"),
    "uncertain": Code("373068000", "SCT", "Undetermined"),
}

# --- Laterality: CID 244 ----------------------------------------------------------------------------
LATERALITY = {
    "left": Code("7771000", "SCT", "Left"),
    "right": Code("24028007", "SCT", "Right"),
    "bilateral": Code("51440002", "SCT", "Bilateral"),
}

# --- Severity: CID 3716, else local -----------------------------------------------------------------
SEVERITY_VALUES = {
    "mild": Code("255604002", "SCT", "Mild"),
    "moderate": Code("6736007", "SCT", "Moderate"),
    "severe": Code("24484000", "SCT", "Severe"),
    "mild-to-moderate": Code("371923003", "SCT", "Mild to Moderate"),
    "moderate-to-severe": Code("371924009", "SCT", "Moderate to Severe"),
    # the labeler's other words (prompts/lexicon/cues.json "severity"): size and amount, not severity
    "trace": Code("trace", LOCAL_SCHEME, "Trace"),
    "tiny": Code("tiny", LOCAL_SCHEME, "Tiny"),
    "minimal": Code("minimal", LOCAL_SCHEME, "Minimal"),
    "small": Code("small", LOCAL_SCHEME, "Small"),
    "large": Code("large", LOCAL_SCHEME, "Large"),
    "small-to-moderate": Code("small-moderate", LOCAL_SCHEME, "Small to moderate"),
    "moderate-to-large": Code("moderate-large", LOCAL_SCHEME, "Moderate to large"),
}
#: Any other severity wording: this code, with the wording as its meaning (at most 64 characters).
SEVERITY_UNLISTED = "unlisted"

# --- Anatomic sites (Finding Site, carrier of laterality) -------------------------------------------
LUNG = Code("39607008", "SCT", "Lung")
PLEURA = Code("3120008", "SCT", "Pleura")
CHEST = Code("816094009", "SCT", "Chest")


class FindingCode(NamedTuple):
    code: Code
    site: Code          # where a stated laterality applies


FINDING_CODES: dict[str, FindingCode] = {
    "atelectasis": FindingCode(Code("46621007", "SCT", "Atelectasis"), LUNG),
    "cardiomegaly": FindingCode(Code("8186001", "SCT", "Cardiomegaly"), CHEST),
    "consolidation": FindingCode(Code("95436008", "SCT", "Lung consolidation"), LUNG),
    "edema": FindingCode(Code("19242006", "SCT", "Pulmonary edema"), LUNG),
    "pleural_effusion": FindingCode(Code("60046008", "SCT", "Pleural effusion"), PLEURA),
    "pneumothorax": FindingCode(Code("36118008", "SCT", "Pneumothorax"), PLEURA),
    "pneumonia": FindingCode(Code("233604007", "SCT", "Pneumonia"), LUNG),
    "lung_opacity": FindingCode(Code("263930000", "SCT", "Opacity of lung"), LUNG),   # UNVERIFIED (as in FHIR)
    "nodule_or_mass": FindingCode(Code("309529002", "SCT", "Lung mass"), LUNG),
    "fracture": FindingCode(Code("125605004", "SCT", "Fracture of bone"), CHEST),      # UNVERIFIED (as in FHIR)
    "support_devices": FindingCode(Code("397578001", "SCT", "Device in situ"), CHEST),
    "no_acute_finding": FindingCode(Code("281900007", "SCT", "No abnormality detected"), CHEST),
}
