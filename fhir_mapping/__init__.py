"""FHIR R4 in (Patient, ServiceRequest, Condition, Encounter -> context) and out (the AI draft Bundle)."""
from fhir_mapping.draft import DISCLAIMER, DraftInputs, build_draft, comparison_text, for_patient, with_comparison
from fhir_mapping.errors import FhirMappingError
from fhir_mapping.r4 import fhir_string, validate_r4
from fhir_mapping.read import OrderInfo, patient_mrns, patient_reference, read_context, read_order

__all__ = [
    "DISCLAIMER",
    "DraftInputs",
    "FhirMappingError",
    "OrderInfo",
    "build_draft",
    "comparison_text",
    "for_patient",
    "fhir_string",
    "patient_mrns",
    "patient_reference",
    "read_context",
    "read_order",
    "validate_r4",
    "with_comparison",
]
