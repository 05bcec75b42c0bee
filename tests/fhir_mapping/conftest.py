"""fhir_mapping fixtures: the R4 schema validators live in tests/support/fhir_schema.py (shared)."""
