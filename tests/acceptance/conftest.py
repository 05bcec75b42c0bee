"""Acceptance tests reuse the service fixtures: synthetic studies in a folder (pat-42's study, MRN0042)."""
from tests.cds_hooks.conftest import study_folder  # noqa: F401  (a fixture, found by name)
