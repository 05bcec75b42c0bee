"""Errors of the evaluation harness: one root, a short stable code, a message that says what to do."""
from __future__ import annotations


class EvaluationError(Exception):
    """Root of the evaluation errors; ``code`` is a short stable string for scripts."""

    code = "evaluation_error"


class ManifestError(EvaluationError):
    """The dataset manifest cannot be read as a whole (bad layout, missing columns, no cases)."""

    code = "bad_manifest"


class UnreadableImage(EvaluationError):
    """One row's image cannot be read; the run lists the row and goes on."""

    code = "unreadable_image"


class PlanError(EvaluationError):
    """The requested experiment makes no sense (unknown preset or prompt, empty sweep, bad value)."""

    code = "bad_plan"
