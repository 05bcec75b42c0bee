"""Fixtures (registered in tests/conftest.py): HL7's official FHIR R4 JSON schema, loaded once, and a validator that uses it quickly.

The schema's root and its ``ResourceList`` are ``oneOf`` over all 146 resource definitions, and
every definition requires ``resourceType`` with a ``const`` equal to its name (checked below). So
a document can match only the branch named by its ``resourceType``: narrowing each such
``oneOf`` to the resource types that occur in the document gives the same verdict as the full
schema, in milliseconds instead of ~10 s per Bundle on this machine. `test_schema` checks the
two agree on a real draft.
"""
from __future__ import annotations

import copy
import json

import pytest


def resource_types(value) -> set[str]:
    """Every ``resourceType`` in a JSON document (top level, contained, Bundle entries)."""
    found: set[str] = set()
    if isinstance(value, dict):
        if isinstance(value.get("resourceType"), str):
            found.add(value["resourceType"])
        for item in value.values():
            found |= resource_types(item)
    elif isinstance(value, list):
        for item in value:
            found |= resource_types(item)
    return found


@pytest.fixture(scope="session")
def r4_schema(fhir_r4_schema_path) -> dict:
    schema = json.loads(fhir_r4_schema_path.read_text())
    definitions = schema["definitions"]
    for name in schema["discriminator"]["mapping"]:       # the premise of the narrowing
        assert definitions[name]["properties"]["resourceType"]["const"] == name
        assert "resourceType" in definitions[name]["required"]
    return schema


@pytest.fixture(scope="session")
def r4_schema_errors(r4_schema):
    """``errors(document) -> list[str]``: the official R4 schema's complaints, narrowed by resourceType."""
    import jsonschema

    cache: dict[frozenset, jsonschema.Draft6Validator] = {}

    def narrowed(types: frozenset) -> jsonschema.Draft6Validator:
        if types not in cache:
            schema = copy.copy(r4_schema)
            schema["definitions"] = dict(r4_schema["definitions"])
            keep = [{"$ref": f"#/definitions/{t}"} for t in sorted(types) if t in r4_schema["definitions"]]
            keep = keep or [{"$ref": "#/definitions/Bundle"}]      # nothing known: still fail
            schema["oneOf"] = keep
            schema["definitions"]["ResourceList"] = {"oneOf": keep}
            cache[types] = jsonschema.Draft6Validator(schema)
        return cache[types]

    def leaves(error, kept: list[str]):
        """For a failed resource oneOf, the errors of the branch its resourceType names (readable)."""
        if error.validator == "oneOf" and error.context and isinstance(error.instance, dict) \
                and error.instance.get("resourceType") in kept:
            branch = kept.index(error.instance["resourceType"])
            inner = [c for c in error.context if c.relative_schema_path[0] == branch]
            if inner:
                for c in inner:
                    yield from leaves(c, kept)
                return
        yield error

    def errors(document) -> list[str]:
        types = frozenset(resource_types(document))
        validator = narrowed(types)
        kept = [ref["$ref"].rsplit("/", 1)[1] for ref in validator.schema["oneOf"]]
        return [f"{'/'.join(map(str, leaf.absolute_path)) or '<root>'}: {leaf.message[:300]}"
                for e in validator.iter_errors(document) for leaf in leaves(e, kept)]

    return errors


@pytest.fixture(scope="session")
def assert_valid_r4(r4_schema_errors):
    """Assert a document passes the official R4 JSON schema, the R4B models, and round-trips."""
    from fhir_mapping import validate_r4
    from fhir_mapping.r4 import round_trip

    def check(document: dict) -> None:
        problems = r4_schema_errors(document)
        assert not problems, "R4 JSON schema:\n" + "\n".join(problems)
        validate_r4(document)
        assert round_trip(document) == document
    return check
