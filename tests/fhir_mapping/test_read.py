"""FHIR in: read_order, read_context, patient_reference, patient_mrns on R4, STU3, R5 and odd shapes."""
from __future__ import annotations

from datetime import date, datetime

import pytest

from prompts.context import ClinicalContext

from fhir_mapping import (FhirMappingError, OrderInfo, patient_mrns, patient_reference, read_context,
                          read_order)
from tests.fhir_mapping.samples import (ENCOUNTER, MRN, OPERATION_OUTCOME, PATIENT, SERVICE_REQUEST,
                                        condition, deep, searchset)

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def typed(code: str, value: str, system: str = V2_0203, **extra) -> dict:
    return {"type": {"coding": [{"system": system, "code": code}]}, "value": value, **extra}


# --- read_order ----------------------------------------------------------------------------------------
def test_read_order_r4():
    order = read_order(SERVICE_REQUEST)
    assert order == OrderInfo(
        id="sr-cxr-1",
        codings=(("http://loinc.org", "36643-5", "XR Chest 2 Views"), ("http://www.ama-assn.org/go/cpt", "71046", None)),
        text="XR chest PA and lateral",
        accession_number="ACC-2024-0001",
        subject_reference="Patient/pat-42",
        encounter_reference="Encounter/enc-9",
        reason_texts=("Cough", "Fever for 3 days", "Suspected pneumonia"),
        status="draft",
        resource_type="ServiceRequest",
    )


@pytest.mark.parametrize("identifier, expected", [
    (typed("ACSN", "A1"), "A1"),
    (typed("ACSN", "A2", system="http://hl7.org/fhir/v2/0203"), "A2"),              # STU3 system
    ({"system": "urn:oid:1.2.3/accession-number", "value": "A3"}, "A3"),          # system names it
    ({"type": {"text": "Accession Number"}, "value": "A4"}, "A4"),                # type text names it
    ({"value": "PLACER-1"}, None),            # untyped, even alone: usually the placer number
    (typed("PLAC", "PLACER-2"), None),
    (typed("FILL", "FILLER-3"), None),
    (typed("ACSN", "OLD-1", use="old"), None),
    (typed("ACSN", "   "), None),
])
def test_accession_number_rules(identifier, expected):
    sr = {"resourceType": "ServiceRequest", "identifier": [identifier]}
    assert read_order(sr).accession_number == expected


def test_accession_number_first_acsn_wins_over_other_identifiers():
    sr = {"resourceType": "ServiceRequest",
          "identifier": [{"value": "X"}, typed("PLAC", "P"), typed("ACSN", "A"), typed("ACSN", "B")]}
    assert read_order(sr).accession_number == "A"


@pytest.mark.parametrize("reference, expected", [
    ("Patient/p1", "Patient/p1"),
    ("https://ehr.example.org/fhir/r4/Patient/p1", "Patient/p1"),   # absolute (Da Vinci CRD examples)
    ("Patient/p1/_history/3", "Patient/p1"),
    ("urn:uuid:9b2f9a6e-1b1c-4e1e-9f0a-8f1d2a3b4c5d", None),          # Bundle-local
    ("#p1", None),                                                    # contained
    ("Group/g1", None),                                               # not a patient
    ("", None),
])
def test_subject_reference_is_normalised(reference, expected):
    sr = {"resourceType": "ServiceRequest", "subject": {"reference": reference}}
    assert read_order(sr).subject_reference == expected


def test_read_order_sandbox_shape_is_empty_not_an_error():
    # What the public CDS Hooks sandbox sends on its PAMA tab before a study is picked.
    sr = {"resourceType": "ServiceRequest", "id": "example-request-id", "status": "draft", "intent": "plan",
          "code": {"coding": [{}]}, "subject": {"reference": "Patient/smart-1288992"}, "reasonCode": []}
    order = read_order(sr)
    assert (order.codings, order.text, order.reason_texts, order.accession_number) == ((), None, (), None)
    assert order.subject_reference == "Patient/smart-1288992"


def test_read_order_r5_codeable_references():
    sr = {"resourceType": "ServiceRequest", "id": "r5",
          "code": {"concept": {"coding": [{"system": "http://loinc.org", "code": "36554-4"}], "text": "CXR"}},
          "reason": [{"concept": {"text": "Dyspnoea"}},
                     {"reference": {"reference": "Condition/1", "display": "Heart failure"}}]}
    order = read_order(sr)
    assert order.codings == (("http://loinc.org", "36554-4", None),)
    assert order.text == "CXR"
    assert order.reason_texts == ("Dyspnoea", "Heart failure")


def test_read_order_stu3_procedure_request():
    pr = {"resourceType": "ProcedureRequest", "id": "pr-1", "status": "active",
          "code": {"text": "Chest X-ray"}, "subject": {"reference": "Patient/p"},
          "context": {"reference": "Encounter/e"}, "reasonCode": [{"text": " chest   pain "}]}
    order = read_order(pr)
    assert order.resource_type == "ProcedureRequest"
    assert order.encounter_reference == "Encounter/e"
    assert order.reason_texts == ("chest pain",)          # whitespace collapsed


def test_read_order_wrong_shapes_read_as_absent():
    sr = {"resourceType": "ServiceRequest", "id": "urn:uuid:1234", "code": "not-a-concept",
          "identifier": {"value": "lone object"}, "reasonCode": "cough", "subject": ["Patient/x"]}
    order = read_order(sr)
    assert order == OrderInfo(id=None)


def test_read_order_dedupes_reasons_case_insensitively():
    sr = {"resourceType": "ServiceRequest", "reasonCode": [{"text": "Cough"}, {"text": "cough"}],
          "reasonReference": [{"display": "COUGH"}, {"reference": "Condition/x"}]}
    assert read_order(sr).reason_texts == ("Cough",)


def test_read_order_operation_outcome_is_refused():
    with pytest.raises(FhirMappingError, match="got an OperationOutcome instead of the ServiceRequest"):
        read_order(OPERATION_OUTCOME)


def test_read_order_wrong_resource_type():
    with pytest.raises(FhirMappingError, match="the order has resourceType 'Patient'; expected ServiceRequest or "
                                               "ProcedureRequest") as info:
        read_order(PATIENT)
    assert (info.value.code, info.value.status) == ("invalid-resource", 400)


def test_read_order_none():
    with pytest.raises(FhirMappingError, match="no order given"):
        read_order(None)


def test_read_order_not_a_dict():
    with pytest.raises(FhirMappingError, match="the order must be a FHIR resource \\(a JSON object\\), got list"):
        read_order([SERVICE_REQUEST])


# --- patient_reference / patient_mrns --------------------------------------------------------------------
def test_patient_reference():
    assert patient_reference(PATIENT) == "Patient/pat-42"
    assert patient_reference({"resourceType": "Patient"}) is None
    assert patient_reference({"resourceType": "Patient", "id": "bad id!"}) is None
    assert patient_reference(OPERATION_OUTCOME) is None
    assert patient_reference(None) is None


def test_patient_reference_wrong_type():
    with pytest.raises(FhirMappingError, match="patient has resourceType 'Encounter'; expected Patient"):
        patient_reference(ENCOUNTER)


def test_patient_mrns_mr_first_and_never_ssn():
    assert patient_mrns(PATIENT) == (MRN,)


def test_patient_mrns_ranking_and_filters():
    patient = {"resourceType": "Patient", "identifier": [
        {"value": "UNTYPED-1"},
        typed("PI", "INTERNAL-7"),
        typed("DL", "DRIVER-1"),
        typed("MR", "OLD-MRN", use="old"),
        typed("MR", "X" * 65),                            # too long for VR LO
        typed("MR", "A\\B"),                              # backslash is DICOM's value separator
        typed("MR", "MRN-1", system="http://hl7.org/fhir/v2/0203"),
        typed("MRT", "TEMP-2"),
        {"type": {"text": "Medical record"}, "value": "TEXT-ONLY"},   # typed, but not by a code we know
        typed("MR", "MRN-1"),                             # duplicate
    ]}
    assert patient_mrns(patient) == ("MRN-1", "TEMP-2", "INTERNAL-7", "UNTYPED-1")


def test_patient_mrns_absent():
    assert patient_mrns(None) == ()
    assert patient_mrns(OPERATION_OUTCOME) == ()
    assert patient_mrns({"resourceType": "Patient", "identifier": "nope"}) == ()


def test_patient_mrns_wrong_type():
    with pytest.raises(FhirMappingError, match="patient has resourceType 'ServiceRequest'"):
        patient_mrns(SERVICE_REQUEST)


# --- read_context ------------------------------------------------------------------------------------------
def test_read_context_full():
    conditions = [condition("Heart failure"), condition("Type 2 diabetes mellitus")]
    context = read_context(patient=PATIENT, service_request=SERVICE_REQUEST, conditions=conditions,
                           encounter=ENCOUNTER, today=date(2024, 5, 2), prior_study_date=date(2023, 1, 5))
    assert context == ClinicalContext(
        age_years=63, sex="female", reason="Cough; Fever for 3 days; Suspected pneumonia",
        conditions=("Heart failure", "Type 2 diabetes mellitus"), care_setting="emergency",
        prior_study_date=date(2023, 1, 5))


def test_read_context_has_no_identifiers():
    context = read_context(patient=PATIENT, service_request=SERVICE_REQUEST, encounter=ENCOUNTER,
                           today=date(2024, 5, 2))
    blob = repr(context.to_json())
    for identifier in (MRN, "pat-42", "sr-cxr-1", "enc-9", "ACC-2024-0001", "1961-04-02", "Quinonez"):
        assert identifier not in blob


def test_read_context_nothing_given():
    assert read_context().is_empty


def test_read_context_operation_outcomes_are_not_data():
    context = read_context(patient=OPERATION_OUTCOME, service_request=OPERATION_OUTCOME,
                           conditions=OPERATION_OUTCOME, encounter=OPERATION_OUTCOME)
    assert context.is_empty


@pytest.mark.parametrize("birth_date, today, age", [
    ("1961-04-02", date(2024, 4, 1), 62),      # the day before the birthday
    ("1961-04-02", date(2024, 4, 2), 63),      # on the birthday
    ("1961-04-02", date(2024, 12, 31), 63),
    ("2000-02-29", date(2023, 2, 28), 22),     # leap-day birthday in a common year: not yet ...
    ("2000-02-29", date(2023, 3, 1), 23),      # ... but on 1 March
    ("2000-02-29", date(2024, 2, 29), 24),
    ("2024-05-02", date(2024, 5, 2), 0),       # born today
    ("1961", date(2024, 12, 30), 62),          # year only: the youngest age it allows
    ("1961", date(2024, 12, 31), 63),
    ("1961-04", date(2024, 4, 29), 62),        # year-month: last day of the month
    ("1961-04", date(2024, 4, 30), 63),
    ("1961-04-02T08:30:00+02:00", date(2024, 4, 2), 63),   # a dateTime where a date belongs
    ("2025-01-01", date(2024, 5, 2), None),    # in the future
    ("1850-01-01", date(2024, 5, 2), None),    # implausible
    ("02/04/1961", date(2024, 5, 2), None),    # not FHIR
    ("1961-02-30", date(2024, 5, 2), None),    # no such day
    (19610402, date(2024, 5, 2), None),
])
def test_age_in_whole_years(birth_date, today, age):
    patient = {"resourceType": "Patient", "birthDate": birth_date}
    assert read_context(patient=patient, today=today).age_years == age


def test_age_missing_birth_date():
    assert read_context(patient={"resourceType": "Patient", "gender": "male"}).age_years is None


@pytest.mark.parametrize("gender, sex", [
    ("female", "female"), ("male", "male"), ("other", "other"), ("unknown", "unknown"),
    ("Male", "male"), ("M", None), ("", None), (None, None), (["female"], None),
])
def test_sex_from_gender(gender, sex):
    assert read_context(patient={"resourceType": "Patient", "gender": gender}).sex == sex


def test_conditions_status_filter():
    conditions = [
        condition("Active confirmed"),
        condition("Recurrence", clinical="recurrence"),
        condition("Relapse", clinical="relapse"),
        condition("No statuses recorded", clinical=None, verification=None),
        condition("Resolved", clinical="resolved"),
        condition("Inactive", clinical="inactive"),
        condition("Remission", clinical="remission"),
        condition("Refuted", verification="refuted"),
        condition("Entered in error", verification="entered-in-error"),
        condition("Provisional", verification="provisional"),
        condition("Differential", verification="differential"),
        condition("Unconfirmed", verification="unconfirmed"),
        condition("Abated, no status", clinical=None, abatementDateTime="2020-01-01"),
    ]
    assert read_context(conditions=conditions).conditions == (
        "Active confirmed", "Recurrence", "Relapse", "No statuses recorded")


def test_conditions_stu3_plain_code_statuses():
    conditions = [
        {"resourceType": "Condition", "clinicalStatus": "active", "verificationStatus": "confirmed",
         "code": {"text": "COPD"}},
        {"resourceType": "Condition", "clinicalStatus": "resolved", "code": {"text": "Old fracture"}},
        {"resourceType": "Condition", "clinicalStatus": "active", "verificationStatus": "provisional",
         "code": {"text": "Maybe TB"}},
    ]
    assert read_context(conditions=conditions).conditions == ("COPD",)


def test_conditions_as_searchset_bundle_with_outcome_entry():
    bundle = searchset(condition("Heart failure"), condition("heart failure"),
                       condition(None, text="Atrial fibrillation"), condition(None),   # no name at all
                       outcome=OPERATION_OUTCOME)
    assert read_context(conditions=bundle).conditions == ("Heart failure", "Atrial fibrillation")


def test_conditions_list_holding_bundles_and_outcomes():
    conditions = [searchset(condition("Asthma")), OPERATION_OUTCOME, condition("Asthma"), condition("CKD")]
    assert read_context(conditions=conditions).conditions == ("Asthma", "CKD")


def test_conditions_of_another_patient_are_left_out():
    conditions = [condition("Mine"), condition("Someone else's", subject="Patient/other"),
                  condition("Absolute reference to me", subject="https://ehr/fhir/Patient/pat-42")]
    context = read_context(patient=PATIENT, conditions=conditions)
    assert context.conditions == ("Mine", "Absolute reference to me")


def test_conditions_empty_bundle_and_empty_list():
    assert read_context(conditions=searchset()).conditions == ()
    assert read_context(conditions=[]).conditions == ()


def test_conditions_wrong_container():
    with pytest.raises(FhirMappingError, match="conditions must be a list of Condition resources or a Bundle, got str"):
        read_context(conditions="Heart failure")


def test_conditions_wrong_resource_type():
    with pytest.raises(FhirMappingError, match="conditions has resourceType 'Patient'; expected a list of Condition"):
        read_context(conditions=PATIENT)


def test_conditions_list_with_wrong_item():
    with pytest.raises(FhirMappingError, match="each condition has resourceType 'Encounter'; expected Condition"):
        read_context(conditions=[condition("ok"), ENCOUNTER])


@pytest.mark.parametrize("encounter, setting", [
    (ENCOUNTER, "emergency"),
    ({"resourceType": "Encounter", "class": {"code": "IMP"}}, "inpatient"),
    ({"resourceType": "Encounter", "class": {"code": "AMB"}}, "ambulatory"),
    # R5: class is a list of CodeableConcept
    ({"resourceType": "Encounter", "class": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                                          "code": "IMP"}]}]}, "inpatient"),
    # DSTU2: a plain code
    ({"resourceType": "Encounter", "class": "outpatient"}, "ambulatory"),
    ({"resourceType": "Encounter", "class": {"system": "urn:local", "code": "X1", "display": "Day Surgery"}},
     "day surgery"),
    ({"resourceType": "Encounter", "class": {"system": "urn:local", "code": "X1"}}, None),
    ({"resourceType": "Encounter", "status": "entered-in-error", "class": {"code": "EMER"}}, None),
    ({"resourceType": "Encounter", "status": "cancelled", "class": {"code": "EMER"}}, None),
    ({"resourceType": "Encounter"}, None),
    ({"resourceType": "Encounter", "class": 7}, None),
])
def test_care_setting(encounter, setting):
    assert read_context(encounter=encounter).care_setting == setting


def test_reason_from_stu3_and_r5_orders():
    pr = {"resourceType": "ProcedureRequest", "reasonCode": [{"text": "Haemoptysis"}]}
    assert read_context(service_request=pr).reason == "Haemoptysis"
    r5 = {"resourceType": "ServiceRequest", "reason": [{"concept": {"coding": [{"display": "Dyspnoea"}]}}]}
    assert read_context(service_request=r5).reason == "Dyspnoea"


def test_missing_fields_everywhere():
    context = read_context(patient={"resourceType": "Patient"}, service_request={"resourceType": "ServiceRequest"},
                           conditions=[{"resourceType": "Condition"}], encounter={"resourceType": "Encounter"})
    assert context.is_empty


@pytest.mark.parametrize("value, expected", [
    (date(2023, 1, 5), date(2023, 1, 5)),
    (datetime(2023, 1, 5, 10, 0), date(2023, 1, 5)),
    ("2023-01-05", date(2023, 1, 5)),
    ("2023-01-05T10:00:00Z", date(2023, 1, 5)),
    (None, None),
])
def test_prior_study_date(value, expected):
    assert read_context(prior_study_date=value).prior_study_date == expected


@pytest.mark.parametrize("value", ["yesterday", "2023-01", "20230105"])
def test_prior_study_date_not_a_date(value):
    with pytest.raises(FhirMappingError, match=f"prior_study_date {value!r} is not a date; give a datetime.date"):
        read_context(prior_study_date=value)


@pytest.mark.parametrize("kwargs, message", [
    ({"patient": ENCOUNTER}, "patient has resourceType 'Encounter'; expected Patient"),
    ({"encounter": PATIENT}, "encounter has resourceType 'Patient'; expected Encounter"),
    ({"service_request": PATIENT}, "service_request has resourceType 'Patient'; expected ServiceRequest"),
    ({"patient": "Patient/1"}, "patient must be a FHIR resource \\(a JSON object\\), got str"),
])
def test_read_context_wrong_types(kwargs, message):
    with pytest.raises(FhirMappingError, match=message):
        read_context(**kwargs)


def test_read_context_does_not_modify_its_inputs():
    patient, sr, encounter = deep(PATIENT), deep(SERVICE_REQUEST), deep(ENCOUNTER)
    read_context(patient=patient, service_request=sr, encounter=encounter, conditions=[condition("x")])
    assert (patient, sr, encounter) == (PATIENT, SERVICE_REQUEST, ENCOUNTER)
