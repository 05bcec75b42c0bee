"""What to run: prompts x temperatures x top_p x repeats, the case filters, and the paper's presets."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace

from evaluation.errors import PlanError

# Prompts whose output the harness can score: two report prompts (the labeler reads the text) and
# the per-finding yes/no questions (P(Yes) per finding, no sampling). The question arm is asked
# without the clinical context, like report.v1, so that basic vs context vs question compares the
# prompts and not the information given; "finding_question.v1+context" is the same template with the
# case's context block, the counterpart of report_context.v1.
REPORT_PROMPTS: tuple[str, ...] = ("report.v1", "report_context.v1")
SCORE_PROMPT = "finding_question.v1"
SCORE_CONTEXT_PROMPT = "finding_question.v1+context"
SCORE_PROMPTS: tuple[str, ...] = (SCORE_PROMPT, SCORE_CONTEXT_PROMPT)
EVALUATION_PROMPTS: tuple[str, ...] = REPORT_PROMPTS + SCORE_PROMPTS
CONTEXT_PROMPTS: frozenset[str] = frozenset({"report_context.v1", SCORE_CONTEXT_PROMPT})
SCORE_THRESHOLD = 0.5          # P(Yes) >= this -> "present" when the question prompt is scored as labels


def template_of(prompt: str) -> str:
    """The ``prompts`` template an evaluation prompt renders ("finding_question.v1+context" -> its template)."""
    return SCORE_PROMPT if prompt == SCORE_CONTEXT_PROMPT else prompt


def context_variant(prompt: str) -> str:
    """"with" when the prompt shows the case's clinical context (age, sex, indication), else "without"."""
    return "with" if prompt in CONTEXT_PROMPTS else "without"


@dataclass(frozen=True)
class Plan:
    """One evaluation: every (prompt, temperature, top_p, repeat) for every selected case.

    The question prompts (``SCORE_PROMPTS``) are scored once per case (deterministic: no
    temperature, no repeats).
    Seeds are derived per generation from ``seed`` (see ``generation_seed``), so a resumed or
    re-run evaluation samples the same way.
    """

    prompts: tuple[str, ...] = ("report.v1",)
    temperatures: tuple[float, ...] = (0.2,)
    top_ps: tuple[float, ...] = (0.8,)
    repeats: int = 1
    seed: int = 0
    max_new_tokens: int | None = None
    min_age: int | None = None
    max_age: int | None = None
    limit: int | None = None
    bootstrap: int = 1000
    preset: str | None = None

    def __post_init__(self) -> None:
        if not self.prompts:
            raise PlanError("no prompt to evaluate; pass --prompt (e.g. report.v1) or a --preset")
        for p in self.prompts:
            if p not in EVALUATION_PROMPTS:
                raise PlanError(f"prompt {p!r} cannot be evaluated; use one of {', '.join(EVALUATION_PROMPTS)}")
        if any(p in REPORT_PROMPTS for p in self.prompts):
            if not self.temperatures or not self.top_ps:
                raise PlanError("an empty temperature or top_p list leaves nothing to generate")
        for t in self.temperatures:
            if not 0 <= t <= 2:
                raise PlanError(f"temperature {t} is outside 0-2 (0 or <= 0.001 = greedy)")
        for p in self.top_ps:
            if not 0 < p <= 1:
                raise PlanError(f"top_p {p} is outside (0, 1]")
        if self.repeats < 1:
            raise PlanError(f"repeats must be at least 1, got {self.repeats}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise PlanError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.limit is not None and self.limit < 1:
            raise PlanError(f"limit must be at least 1, got {self.limit}")
        if self.bootstrap < 0:
            raise PlanError(f"bootstrap resamples must be >= 0, got {self.bootstrap}")
        if self.min_age is not None and self.max_age is not None and self.min_age > self.max_age:
            raise PlanError(f"min_age {self.min_age} is above max_age {self.max_age}")

    def settings(self) -> list[tuple[str, float | None, float | None, int]]:
        """Every (prompt, temperature, top_p, repeat) to run per case, in a stable order."""
        out = []
        for prompt in self.prompts:
            if prompt in SCORE_PROMPTS:
                out.append((prompt, None, None, 0))
                continue
            for t in self.temperatures:
                for p in self.top_ps:
                    out.extend((prompt, t, p, r) for r in range(self.repeats))
        return out

    def to_json(self) -> dict:
        d = asdict(self)
        d["prompts"], d["temperatures"], d["top_ps"] = list(self.prompts), list(self.temperatures), list(self.top_ps)
        return d


# The paper's experiments (arXiv 2310.18341): a temperature sweep at top_p 0.8 with 10 repeats;
# prompt variants (basic / context / questions, and the questions with context so that both prompt
# styles are seen with and without it); zero-shot normal-vs-abnormal on a paediatric subset (age < 18).
PRESETS: dict[str, dict] = {
    "temperature-sweep": {"prompts": ("report.v1",), "temperatures": (0.2, 0.4, 0.6, 0.8, 1.0),
                          "top_ps": (0.8,), "repeats": 10},
    "prompt-comparison": {"prompts": ("report.v1", "report_context.v1", SCORE_PROMPT, SCORE_CONTEXT_PROMPT),
                          "temperatures": (0.2,), "top_ps": (0.8,), "repeats": 1},
    "pediatric-abnormal": {"prompts": ("report.v1",), "temperatures": (0.2,), "top_ps": (0.8,),
                           "repeats": 1, "max_age": 17},
}


def make_plan(preset: str | None = None, **overrides) -> Plan:
    """A Plan from a preset (optional) with explicit values on top; ``None`` values are ignored.

    Raises
    ------
    PlanError
        Unknown preset, or values that fail Plan's checks.
    """
    values: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise PlanError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
        values["preset"] = preset
    for k, v in overrides.items():
        if v is None or (isinstance(v, (tuple, list)) and not v):
            continue
        values[k] = tuple(v) if isinstance(v, list) else v
    return replace(Plan(), **values)


def generation_seed(base: int, case_id: str, prompt: str, temperature: float | None, top_p: float | None,
                    repeat: int) -> int:
    """A stable 31-bit seed per generation: the same on resume, different across images and repeats."""
    blob = f"{base}|{case_id}|{prompt}|{fmt(temperature)}|{fmt(top_p)}|{repeat}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def fmt(value) -> str:
    """How settings are written in per_image.csv and cache keys ("" for None, 0.2 not 0.20000001)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
