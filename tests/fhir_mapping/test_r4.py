"""validate_r4 (the runtime check) and the official R4 JSON schema (the tests' second opinion)."""
from __future__ import annotations

import copy

import pytest

from fhir_mapping import FhirMappingError, build_draft, validate_r4
from fhir_mapping.r4 import FHIR_VERSION, model_class
from tests.fhir_mapping.samples import draft_inputs, findings

MINIMAL = {"resourceType": "DiagnosticReport", "status": "preliminary", "code": {"text": "XR chest"}}


def test_pinned_release():
    import fhir.resources.R4B as r4b

    assert FHIR_VERSION == "4.0.1"
    assert r4b.__fhir_version__ == "4.3.0"      # R4B models stand in for R4 (fhir.resources has no R4)
    assert model_class("DiagnosticReport").__module__.startswith("fhir.resources.R4B")


def test_valid_resource_passes():
    assert validate_r4(copy.deepcopy(MINIMAL)) is None


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("code"), "DiagnosticReport.code: Field required"),
    (lambda r: r.update(code=None), "DiagnosticReport.code: null"),          # the models would accept this
    (lambda r: r.update(category=[]), "DiagnosticReport.category: empty array"),
    (lambda r: r.update(conclusion="  "), "DiagnosticReport.conclusion: empty string"),
    (lambda r: r.update(subject={}), "DiagnosticReport.subject: empty object"),
    (lambda r: r.update(study=[{"reference": "ImagingStudy/1"}]), "DiagnosticReport.study: Extra inputs"),  # R5 only
    (lambda r: r.update(issued="yesterday"), "DiagnosticReport.issued: "),
])
def test_invalid_resource_lists_the_element(change, message):
    resource = copy.deepcopy(MINIMAL)
    change(resource)
    with pytest.raises(FhirMappingError, match=f"DiagnosticReport is not valid FHIR R4 .*{message}") as info:
        validate_r4(resource)
    assert (info.value.code, info.value.status) == ("invalid-fhir", 500)


def test_nested_errors_name_their_path():
    bundle = build_draft(draft_inputs())
    bundle["entry"][0]["resource"]["contained"][1]["status"] = None
    bundle["entry"][2]["resource"].pop("target")
    with pytest.raises(FhirMappingError, match="Bundle.entry\\[0\\].resource.contained\\[1\\].status: null"):
        validate_r4(bundle)
    bundle["entry"][0]["resource"]["contained"][1]["status"] = "preliminary"
    with pytest.raises(FhirMappingError, match="Bundle.entry.2.resource.target: Field required"):
        validate_r4(bundle)


def test_many_problems_are_capped():
    resource = dict(MINIMAL, identifier=[{"value": ""} for _ in range(25)])
    with pytest.raises(FhirMappingError, match="\\(25 problem\\(s\\)\\).*\\(and 5 more\\)"):
        validate_r4(resource)


def test_unknown_resource_type():
    with pytest.raises(FhirMappingError, match="resourceType 'ImagingSelection' is not a FHIR R4 resource"):
        validate_r4({"resourceType": "ImagingSelection", "status": "available"})     # R5 only


@pytest.mark.parametrize("value, found", [([MINIMAL], "list"), ({"status": "final"}, "no resourceType")])
def test_not_a_resource(value, found):
    with pytest.raises(FhirMappingError, match=f"not a FHIR resource \\({found}\\)"):
        validate_r4(value)


# --- the official schema ------------------------------------------------------------------------------------
def test_schema_rejects_what_the_models_reject(r4_schema_errors):
    assert r4_schema_errors(MINIMAL) == []
    assert any("study" in e for e in r4_schema_errors(dict(MINIMAL, study=[{"reference": "ImagingStudy/1"}])))
    assert any("status" in e for e in r4_schema_errors(dict(MINIMAL, status="draft")))     # not an R4 code
    assert r4_schema_errors(dict(MINIMAL, resourceType="Nope"))


def test_schema_catches_bad_contained_resource(r4_schema_errors):
    bundle = build_draft(draft_inputs())
    observation = bundle["entry"][0]["resource"]["contained"][1]
    observation["valueBoolean"] = True          # value[x] twice: the R4 schema forbids neither alone
    observation["bogus"] = 1
    assert any("bogus" in e for e in r4_schema_errors(bundle))


@pytest.mark.slow
def test_narrowed_schema_agrees_with_the_full_schema(r4_schema, r4_schema_errors):
    """The fixture narrows oneOf by resourceType; the full official schema gives the same verdict."""
    import jsonschema

    # One contained Device and one Observation: each contained resource costs the full schema
    # a oneOf over 146 definitions (seconds on 2 cores).
    report = build_draft(draft_inputs(findings=findings(pneumothorax="absent"), scores=None))["entry"][0]["resource"]
    full = jsonschema.Draft6Validator(r4_schema)
    assert list(full.iter_errors(report)) == [] and r4_schema_errors(report) == []


def test_schema_errors_name_the_element(r4_schema_errors):
    report = dict(MINIMAL, contained=[{"resourceType": "Observation", "id": "o", "status": "final",
                                       "code": {"text": "y"}, "bogus": 1}])
    assert r4_schema_errors(report) == [
        "contained/0: Additional properties are not allowed ('bogus' was unexpected)"]


# --- characters a FHIR string cannot hold -----------------------------------------------------------------
@pytest.mark.parametrize("char, label", [
    ("\x1f", "U\\+001F"), ("\x0b", "U\\+000B"), ("\x00", "U\\+0000"), ("\xa0", "U\\+00A0 NO-BREAK SPACE"),
    ("\ud800", "U\\+D800 lone surrogate"), ("\ufffe", "U\\+FFFE"), ("\u2028", "U\\+2028 LINE SEPARATOR"),
])
def test_control_characters_in_a_string_name_the_path(char, label):
    resource = dict(MINIMAL, contained=[{"resourceType": "Observation", "id": "o", "status": "final",
                                         "code": {"text": "y"}, "note": [{"text": f"small{char}effusion"}]}])
    with pytest.raises(FhirMappingError, match=f"DiagnosticReport.contained\\[0\\].note\\[0\\].text: character {label} "
                                               "at offset 5 is not allowed in a FHIR string .*fhir_mapping.fhir_string"):
        validate_r4(resource)


def test_the_models_alone_accept_what_validate_r4_rejects(r4_schema_errors):
    resource = dict(MINIMAL, conclusion="small\x1feffusion")
    model_class("DiagnosticReport").model_validate(resource)       # why validate_r4 checks characters itself
    assert any(e.startswith("conclusion: ") for e in r4_schema_errors(resource))


def test_fhir_string_output_always_passes_the_schema_pattern(r4_schema):
    import re

    from fhir_mapping import fhir_string

    pattern = re.compile(r4_schema["definitions"]["string"]["pattern"])
    assert r4_schema["definitions"]["markdown"]["pattern"] == pattern.pattern
    every = "".join(map(chr, range(0x110000)))                    # every code point, surrogates included
    cleaned = fhir_string(every)
    assert pattern.match(cleaned)
    cleaned.encode("utf-8")
    validate_r4(dict(MINIMAL, conclusion=cleaned))
    clean = "Épanchement — 5 mm.\tNo\r\npneumothorax ✓ 😀"
    assert fhir_string(clean) == clean                             # clean text is left alone


@pytest.mark.parametrize("text, expected", [
    ("a\x0bb\x0cc\x1cd\x85e\u2028f\u2029g", "a\nb\nc\nd\ne\nf\ng"),     # line and page breaks
    ("a\x1fb\xa0c\u2009d\u3000e", "a b c d e"),                        # spaces of other kinds
    ("a\x00b\x07c\x7fd\x9be\ufeffg\ufdd0h\U0010ffffi", "abcdeghi"),           # controls, BOM, noncharacters
    ("a\udc80b", "a\ufffdb"),                                           # lone surrogate
])
def test_fhir_string_replacements(text, expected):
    from fhir_mapping import fhir_string

    assert fhir_string(text) == expected


def test_fhir_string_takes_text():
    from fhir_mapping import fhir_string

    with pytest.raises(TypeError, match="fhir_string takes a str, got bytes"):
        fhir_string(b"x")
