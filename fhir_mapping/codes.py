"""Every code system and code the FHIR mapping reads or writes, in one table.

Sources: ../shared/reference/IMAGING_FHIR.md §5.1-5.4 (LOINC, category, the six primary findings,
HL7 AI Transparency on FHIR), DICOM PS3.16 CID 240 "Present-Absent" (presence values), and the
published IGs cited per line. Codes marked ``# UNVERIFIED`` were seen in third-party tables only:
re-check them against a SNOMED CT release before production.
"""
from __future__ import annotations

from typing import NamedTuple

# --- Code systems ---------------------------------------------------------------------------------
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"          # diagnostic service section
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"          # identifier type
V2_0203_STU3 = "http://hl7.org/fhir/v2/0203"                       # the same, as STU3 spelled it
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"   # Encounter.class (R4)
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
UCUM = "http://unitsofmeasure.org"
URN_IETF_RFC_3986 = "urn:ietf:rfc:3986"
DICOM_UID = "urn:dicom:uid"

# HL7 AI Transparency on FHIR (STU1 ballot, canonical http://hl7.org/fhir/uv/aitransparency, read
# from the IG's FSH source in HL7/aitransparency-ig): a ballot, so its codes may still change.
AI_TRANSPARENCY = "http://hl7.org/fhir/uv/aitransparency"
AI_DEVICE_TYPE = f"{AI_TRANSPARENCY}/CodeSystem/AIdeviceTypeCS"
EXT_AI_KIND = f"{AI_TRANSPARENCY}/StructureDefinition/aitransparency.AIKind"

# This project's own canonical base, for the two things no published artefact covers.
# A placeholder under example.org until the deployment owns a domain: change it here only.
PROJECT_BASE = "https://cxr-cds.example.org/fhir"
EXT_AI_DEVICE = f"{PROJECT_BASE}/StructureDefinition/ai-device"     # DiagnosticReport -> contained Device
PROJECT_CODES = f"{PROJECT_BASE}/CodeSystem/cxr-ai"                 # model-output quantities


def coding(system: str, code: str, display: str | None = None) -> dict:
    """One FHIR Coding as JSON; ``display`` is left out when None."""
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


# --- Labels, categories, identifier types ---------------------------------------------------------
AIAST = coding(V3_OBSERVATION_VALUE, "AIAST", "Artificial Intelligence asserted")
CATEGORY_RAD = coding(V2_0074, "RAD", "Radiology")
CATEGORY_RAD_LOINC = coding(LOINC, "LP29684-5", "Radiology")          # US Core DiagnosticReport category
CATEGORY_IMAGING = coding(OBSERVATION_CATEGORY, "imaging", "Imaging")
IDENTIFIER_TYPE_ACSN = coding(V2_0203, "ACSN", "Accession ID")
IDENTIFIER_TYPES_MRN = ("MR", "MRT", "PI")        # medical record no., temporary MRN, patient internal id
ACTIVITY_CREATE = coding(V3_DATA_OPERATION, "CREATE", "create")
AGENT_AUTHOR = coding(PROVENANCE_PARTICIPANT_TYPE, "author", "Author")
AI_DEVICE = coding(AI_DEVICE_TYPE, "Artificial-Intelligence", "All kinds of Artificial Intelligence")
AI_KIND_VLM = coding(AI_DEVICE_TYPE, "Vision-Language-Models", "Vision-Language Models")
YES_PROBABILITY = coding(PROJECT_CODES, "yes-probability",
                         "Model probability of 'Yes' to the finding's yes/no question")

# --- Change since the prior study (a comparison of two AI drafts, prompts.compare) -------------------
# No published code system names "new / resolved / unchanged since the prior study" for a finding: the
# categories are this project's own CodeSystem (PROJECT_BASE), carried as an Observation.component whose
# code is CHANGE_SINCE_PRIOR. Worse and better are also stated with the standard v3
# ObservationInterpretation change codes W and B (HL7 THO, ValueSet v3-ObservationInterpretationChange:
# "interpretations of change of quantity and/or severity") in Observation.interpretation.
V3_OBSERVATION_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CHANGE_CODES = f"{PROJECT_BASE}/CodeSystem/cxr-ai-change"
CHANGE_SINCE_PRIOR = coding(PROJECT_CODES, "change-since-prior",
                            "Change since the prior study, from comparing two AI drafts")
CHANGE = {
    "new": coding(CHANGE_CODES, "new", "New since the prior study"),
    "resolved": coding(CHANGE_CODES, "resolved", "Resolved since the prior study"),
    "worse": coding(CHANGE_CODES, "worse", "Worse than on the prior study"),
    "better": coding(CHANGE_CODES, "better", "Better than on the prior study"),
    "unchanged": coding(CHANGE_CODES, "unchanged", "Unchanged since the prior study"),
    "not_comparable": coding(CHANGE_CODES, "not-comparable", "Not comparable with the prior study"),
}
CHANGE_INTERPRETATION = {
    "worse": coding(V3_OBSERVATION_INTERPRETATION, "W", "Worse"),
    "better": coding(V3_OBSERVATION_INTERPRETATION, "B", "Better"),
}

# --- Procedure codes (DiagnosticReport.code when the order has none) ------------------------------
XR_CHEST_2_VIEWS = coding(LOINC, "36643-5", "XR Chest 2 Views")
XR_CHEST_SINGLE_VIEW = coding(LOINC, "36554-4", "XR Chest Single view")

# --- Presence values (Observation.valueCodeableConcept): DICOM CID 240 "Present-Absent" -----------
PRESENCE = {
    "present": coding(SNOMED, "52101004", "Present"),
    "absent": coding(SNOMED, "2667000", "Absent"),
    # "possible X", "cannot exclude X": CID 240's third value. SNOMED 47965005 is "Differential
    # diagnosis", not a presence value, so it is not used.
    "uncertain": coding(SNOMED, "373068000", "Undetermined"),
}

# A finding the report does not mention but the yes/no question scored: the Observation carries the
# probability component and no presence value.
DATA_ABSENT_UNKNOWN = coding("http://terminology.hl7.org/CodeSystem/data-absent-reason", "unknown", "Unknown")

# --- Severity (Observation.component) --------------------------------------------------------------
SEVERITY_ATTRIBUTE = coding(SNOMED, "246112005", "Severity")            # UNVERIFIED
SEVERITY = {
    "mild": coding(SNOMED, "255604002", "Mild"),
    "moderate": coding(SNOMED, "6736007", "Moderate"),
    "severe": coding(SNOMED, "24484000", "Severe"),
}


# --- Findings ---------------------------------------------------------------------------------------
class FindingCode(NamedTuple):
    coding: dict
    text: str                  # human wording for conclusion and Observation.code.text
    site: str | None           # "lung" when laterality maps onto a lung structure; else free text


FINDING_CODES: dict[str, FindingCode] = {
    # IMAGING_FHIR.md §5.3: each matched across several independent code tables.
    "atelectasis": FindingCode(coding(SNOMED, "46621007", "Atelectasis"), "atelectasis", "lung"),
    "cardiomegaly": FindingCode(coding(SNOMED, "8186001", "Cardiomegaly"), "cardiomegaly", None),
    "consolidation": FindingCode(coding(SNOMED, "95436008", "Lung consolidation"), "consolidation", "lung"),
    "edema": FindingCode(coding(SNOMED, "19242006", "Pulmonary edema"), "pulmonary edema", "lung"),
    "pleural_effusion": FindingCode(coding(SNOMED, "60046008", "Pleural effusion"), "pleural effusion",
                                    "hemithorax"),
    "pneumothorax": FindingCode(coding(SNOMED, "36118008", "Pneumothorax"), "pneumothorax", "hemithorax"),
    # The extra findings.
    "pneumonia": FindingCode(coding(SNOMED, "233604007", "Pneumonia"), "pneumonia", "lung"),
    "lung_opacity": FindingCode(coding(SNOMED, "263930000", "Opacity of lung"),     # UNVERIFIED
                                "lung opacity", "lung"),
    # "Lung mass (finding)", used by HL7's genomics-reporting IG; no single code covers nodule-or-mass.
    "nodule_or_mass": FindingCode(coding(SNOMED, "309529002", "Lung mass"), "lung nodule or mass", "lung"),
    "fracture": FindingCode(coding(SNOMED, "125605004", "Fracture of bone"), "fracture",  # UNVERIFIED
                            "hemithorax"),
    # "Device in situ (finding)", the parent concept CH RAD-Order's caveat ValueSet builds on.
    "support_devices": FindingCode(coding(SNOMED, "397578001", "Device in situ"), "support device(s)", None),
}
# Not an Observation (a "no abnormality: absent" value would read as a double negative); when
# present it becomes a conclusionCode only.
NO_ACUTE_FINDING = FindingCode(coding(SNOMED, "281900007", "No abnormality detected"),
                               "no acute cardiopulmonary abnormality", None)

# Lateralised lung structures (Observation.bodySite for findings whose site is "lung").
LUNG_SITE = {
    "left": coding(SNOMED, "44029006", "Left lung structure"),
    "right": coding(SNOMED, "3341006", "Right lung structure"),
    "bilateral": coding(SNOMED, "74101002", "Both lungs"),
}

# --- Encounter.class -> ClinicalContext.care_setting -------------------------------------------------
CARE_SETTING = {
    # R4/R5 v3-ActCode
    "EMER": "emergency", "IMP": "inpatient", "ACUTE": "inpatient", "NONAC": "inpatient",
    "OBSENC": "observation", "PRENC": "pre-admission", "SS": "short stay", "AMB": "ambulatory",
    "HH": "home health", "FLD": "field", "VR": "virtual",
    # DSTU2 Encounter.class was a plain code
    "emergency": "emergency", "inpatient": "inpatient", "outpatient": "ambulatory",
    "ambulatory": "ambulatory", "home": "home health", "field": "field", "daytime": "short stay",
    "virtual": "virtual",
}

# --- Condition status filters ------------------------------------------------------------------------
ACTIVE_CLINICAL_STATUS = frozenset({"active", "recurrence", "relapse"})
# A condition with no verificationStatus is taken as recorded; provisional, differential and
# unconfirmed diagnoses are left out: telling the model about a suspected pneumonia biases its read.
ACCEPTED_VERIFICATION_STATUS = frozenset({"confirmed"})
