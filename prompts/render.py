"""Versioned prompt templates and their rendering: (template, ClinicalContext) -> Prompt, purely.

Templates are files `prompts/templates/<id>.<version>.txt`:

    # <id>.<version>: one line saying what the template is for
    ---
    <image>
    {context_block}Write a radiologic report ...

Everything after the `---` line, byte for byte, is the user turn (the released prompts end
with a newline, so the files do too). Placeholders: `{context_block}` (the clinical-context
lines, "" for an empty context), `{question}` (question.v1), `{finding_phrase}`
(finding_question.v1). A new wording is a new file with a new version, never an edit: the
prompt id and version travel with every result (FHIR Device, card source, cache keys).
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources

from prompts.context import ClinicalContext
from prompts.findings import PRIMARY_FINDINGS
from prompts.sanitize import MAX_QUESTION_CHARS, sanitize_conditions, sanitize_text

# The released system prompt, verbatim (reference/CXR_LLAVA.md), for every task.
SYSTEM_PROMPT = ("You are a helpful radiologist. Try to interpret chest x ray image and answer "
                 "to the question that user provides.")

# template key -> what it is for; the files are the source of truth, this fixes the public order.
TEMPLATES: tuple[str, ...] = (
    "report.v1", "report_context.v1", "differential.v1", "question.v1", "finding_question.v1",
)

# How finding_question.v1 names each finding: "Is there {phrase}?"
FINDING_PHRASES: dict[str, str] = {
    "atelectasis": "atelectasis",
    "cardiomegaly": "cardiomegaly",
    "consolidation": "consolidation",
    "edema": "pulmonary edema",
    "pleural_effusion": "a pleural effusion",
    "pneumothorax": "a pneumothorax",
    "pneumonia": "pneumonia",
    "lung_opacity": "a lung opacity",
    "nodule_or_mass": "a lung nodule or mass",
    "fracture": "a fracture",
    "support_devices": "a support device such as a tube, line or pacemaker",
}

_SEPARATOR = "---\n"
_KEY = re.compile(r"^(?P<id>[a-z][a-z0-9_]*)\.(?P<version>v[0-9]+)$")
_ALLOWED_FIELDS = {"context_block", "question", "finding_phrase"}


class PromptError(ValueError):
    """A template that does not exist, or a rendering input it needs is missing or empty."""

    code = "invalid_prompt"
    http_status = 400


@dataclass(frozen=True)
class Prompt:
    """One rendered prompt: what model_runtime formats into the Llama 2 chat turn.

    `user` holds the literal "<image>" exactly once, first.
    """

    id: str          # "report_context"
    version: str     # "v1"
    system: str
    user: str

    @property
    def key(self) -> str:
        """The id and version as one string, e.g. "report_context.v1" (the template's file name)."""
        return f"{self.id}.{self.version}"


@dataclass(frozen=True)
class _Template:
    id: str
    version: str
    description: str
    body: str
    fields: frozenset[str]


def _unknown(template: object) -> PromptError:
    return PromptError(f"unknown prompt template {template!r}; known templates: {', '.join(TEMPLATES)}")


@cache
def _load(key: str) -> _Template:
    """Read and check one template file (once per process)."""
    m = _KEY.match(key)
    if key not in TEMPLATES or m is None:
        raise _unknown(key)
    path = resources.files("prompts") / "templates" / f"{key}.txt"
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"prompt template file {key}.txt is missing from the installed "
                          f"prompts package (prompts/templates/); reinstall cxr-cds") from None
    header, sep, body = raw.partition(_SEPARATOR)
    if not sep or not header.startswith(f"# {key}:"):
        raise PromptError(f"prompt template file {key}.txt must start with '# {key}: <description>' "
                          f"and a '---' line before the body")
    fields = frozenset(f for _, f, _, _ in string.Formatter().parse(body) if f is not None)
    if fields - _ALLOWED_FIELDS:
        raise PromptError(f"prompt template {key} uses unknown placeholders "
                          f"{sorted(fields - _ALLOWED_FIELDS)}; allowed: {sorted(_ALLOWED_FIELDS)}")
    if not body.startswith("<image>\n") or body.count("<image>") != 1:
        raise PromptError(f"prompt template {key} must start with '<image>\\n' and hold it exactly once")
    return _Template(m["id"], m["version"], header[len(f"# {key}:"):].strip(), body, fields)


def template_description(template: str) -> str:
    """The one-line description from a template file's header."""
    return _load(template).description


def context_block(context: ClinicalContext | None) -> str:
    """The clinical-context lines a prompt shows, each ending in a newline; "" when nothing is known.

    Unknown fields are left out, not written as "unknown": the model should not read absence
    of information as information. All free text is sanitised (see prompts.sanitize).
    """
    if context is None:
        return ""
    lines: list[str] = []
    age = context.age_years
    # bool is an int subclass; ages outside 0-130 are data errors, not patients
    if isinstance(age, int) and not isinstance(age, bool) and 0 <= age <= 130:
        lines.append("Age: less than 1 year" if age == 0 else f"Age: {age} year{'s' if age != 1 else ''}")
    if context.sex in ("male", "female", "other"):
        lines.append(f"Sex: {context.sex}")
    reason = sanitize_text(context.reason)
    if reason:
        lines.append(f"Reason for exam: {reason}")
    conditions = sanitize_conditions(context.conditions)
    if conditions:
        lines.append(f"Relevant conditions: {'; '.join(conditions)}")
    setting = sanitize_text(context.care_setting)
    if setting:
        lines.append(f"Care setting: {setting}")
    if context.prior_study_date is not None:
        lines.append(f"Prior chest radiograph: {context.prior_study_date.isoformat()}")
    if not lines:
        return ""
    return "Clinical information:\n" + "".join(line + "\n" for line in lines)


def render(template: str, context: ClinicalContext | None = None, *, question: str | None = None,
           finding: str | None = None) -> Prompt:
    """Render one versioned template into a Prompt (pure: same inputs, same Prompt).

    Parameters
    ----------
    template : str
        A key of TEMPLATES, e.g. "report_context.v1".
    context : ClinicalContext, optional
        Used by templates with a clinical-context block (all but report.v1, which is the
        released prompt verbatim and ignores it). An empty context adds nothing.
    question : str, optional
        The free question for "question.v1" (sanitised, at most 500 characters).
    finding : str, optional
        A name from FINDING_PHRASES for "finding_question.v1", e.g. "pneumothorax".

    Returns
    -------
    Prompt
        With the released SYSTEM_PROMPT and a user turn holding "<image>" once, first.

    Raises
    ------
    PromptError
        Unknown template; "question.v1" without a question (or one that is empty once
        sanitised); "finding_question.v1" without a known finding.
    """
    if not isinstance(template, str) or template not in TEMPLATES:
        raise _unknown(template)
    t = _load(template)
    values: dict[str, str] = {}
    if "context_block" in t.fields:
        values["context_block"] = context_block(context)
    if "question" in t.fields:
        q = sanitize_text(question, MAX_QUESTION_CHARS)
        if not q:
            # the question itself is not echoed: it may carry patient details
            raise PromptError(f"prompt template {template} needs a question that is not empty once "
                              f"control and chat-format tokens are removed, e.g. "
                              f"render({template!r}, question='Is the heart enlarged?')")
        values["question"] = q
    if "finding_phrase" in t.fields:
        if finding not in FINDING_PHRASES:
            raise PromptError(f"prompt template {template} needs finding= one of "
                              f"{', '.join(FINDING_PHRASES)}; got {finding!r}")
        values["finding_phrase"] = FINDING_PHRASES[finding]
    return Prompt(id=t.id, version=t.version, system=SYSTEM_PROMPT, user=t.body.format(**values))


def finding_questions(context: ClinicalContext | None = None) -> dict[str, Prompt]:
    """One yes/no "finding_question.v1" prompt per PRIMARY finding, keyed by finding name.

    Parameters
    ----------
    context : ClinicalContext, optional
        Shown before each question, as in render().

    Returns
    -------
    dict[str, Prompt]
        In PRIMARY_FINDINGS order, e.g. {"atelectasis": Prompt(...), ..., "pneumothorax": ...}.
    """
    return {name: render("finding_question.v1", context, finding=name) for name in PRIMARY_FINDINGS}

