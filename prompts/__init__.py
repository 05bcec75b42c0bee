"""Prompt templates (versioned files), their rendering, and reading findings back out of reports."""
from prompts.compare import CHANGE_ORDER, SEVERITY_RANK, Change, ChangeKind, Comparison, compare_findings
from prompts.context import ClinicalContext
from prompts.findings import FINDING_NAMES, PRIMARY_FINDINGS, Finding, Findings, extract_findings
from prompts.render import (FINDING_PHRASES, SYSTEM_PROMPT, TEMPLATES, Prompt, PromptError,
                            context_block, finding_questions, render)
from prompts.sanitize import sanitize_text

__all__ = [
    "ClinicalContext",
    "CHANGE_ORDER", "SEVERITY_RANK", "Change", "ChangeKind", "Comparison", "compare_findings",
    "FINDING_NAMES", "PRIMARY_FINDINGS", "Finding", "Findings", "extract_findings",
    "FINDING_PHRASES", "SYSTEM_PROMPT", "TEMPLATES", "Prompt", "PromptError", "context_block",
    "finding_questions", "render", "sanitize_text",
]
