"""The product in one function: study -> image -> prompt -> generation -> findings -> FHIR draft.

Read top to bottom, this module is the data flow of ../shared/DESIGN.md. The HTTP layer
(`cds_hooks.app`) decides *when* to run it (stored result, background job, deadline); the CLI
(`cxr-cds analyze`) runs it directly. Nothing here touches Flask, SQLite or the network except
through the `source` (an `imaging.ImageSource`) and the `generate` callable it is handed.
"""
from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Callable, Sequence

from fhir_mapping import DraftInputs, OrderInfo, build_draft
from imaging import (
    MAX_PIXELS,
    ImageSource,
    RadiographImage,
    Selection,
    StudyMatch,
    StudyNotFound,
    fetch_radiograph,
    locate_studies,
    select_frontal,
)
from model_runtime import GenerationRequest, GenerationResult, GenerationSettings
from prompts import ClinicalContext, Findings, extract_findings, finding_questions, render

DEFAULT_TEMPLATE = "report_context.v1"

Generate = Callable[[GenerationRequest], GenerationResult]
# (image (H, W) uint8, prompts) -> P(yes) per prompt; e.g. model_runtime.Engine.score_yes_no
Score = Callable[..., Sequence[float]]


@dataclass(frozen=True)
class Plan:
    """Which study and which instance an analysis will read (decided from metadata only)."""

    study: StudyMatch
    selection: Selection


@dataclass(frozen=True)
class Analysis:
    """One AI draft: the report, its coded findings, the FHIR draft and where it came from."""

    analysis_id: str
    report_text: str
    findings: Findings
    bundle: dict                    # FHIR R4 Bundle (DiagnosticReport + Device + Provenance)
    diagnostic_report: dict         # the self-contained DiagnosticReport for a CDS `create` action
    study: dict                     # UIDs read, accession, date, view, why this instance
    model: dict                     # name, revision, dtype, quantization, prompt_id, prompt_version
    context_key: str
    timings: dict = field(default_factory=dict)   # ms per stage
    scores: dict | None = None      # per-finding P(yes), when computed
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def truncated(self) -> bool:
        """The report stopped at the token cap: an unfinished text (said on the card and in the draft)."""
        return self.model.get("finish_reason") == "length"

    def to_json(self) -> dict:
        return {
            "analysis_id": self.analysis_id,
            "report": self.report_text,
            "findings": self.findings.to_json(),
            "fhir": self.bundle,
            "diagnostic_report": self.diagnostic_report,
            "study": self.study,
            "model": self.model,
            "context_key": self.context_key,
            "timings": self.timings,
            "scores": self.scores,
            "created": self.created.isoformat(),
        }

    @classmethod
    def from_json(cls, d: dict) -> "Analysis":
        return cls(
            analysis_id=d["analysis_id"],
            report_text=d["report"],
            findings=Findings.from_json(d["findings"]),
            bundle=d["fhir"],
            diagnostic_report=d["diagnostic_report"],
            study=d["study"],
            model=d["model"],
            context_key=d["context_key"],
            timings=d.get("timings") or {},
            scores=d.get("scores"),
            created=datetime.fromisoformat(d["created"]),
        )


def plan_study(
    source: ImageSource,
    *,
    study_instance_uid: str | None = None,
    accession_number: str | None = None,
    patient_id: str | None = None,
    date_range: tuple[date | None, date | None] | None = None,
) -> Plan:
    """Find the study (newest match) and choose its frontal radiograph, from metadata only (QIDO-RS).

    Raises
    ------
    imaging.StudyNotFound, imaging.NoFrontalRadiograph, imaging.ImagingUnavailable
    """
    studies = locate_studies(
        source,
        study_instance_uid=study_instance_uid,
        accession_number=accession_number,
        patient_id=patient_id,
        date_range=date_range,
    )
    if not studies:
        asked = ", ".join(f"{k}={v}" for k, v in (("StudyInstanceUID", study_instance_uid),
                                                  ("AccessionNumber", accession_number),
                                                  ("PatientID", "<given>" if patient_id else None)) if v)
        raise StudyNotFound(f"no CR/DX study matched {asked}; check the identifiers on the order, "
                            "or that the study has reached the PACS")
    study = studies[0]  # newest first
    return Plan(study=study, selection=select_frontal(source, study))


def model_key(identity: dict) -> str:
    """``name@revision/quantization/dtype[/kernel/decode]``: what of the model makes two drafts comparable.

    The one definition used by analysis keys and by the store's per-instance lookups. The kernel
    (``torchao-int4-g128-tinygemm``, ``bitsandbytes-nf4``...) and the decode path (``eager``,
    ``static+cudagraphs``...) are part of it when the identity has them (the Engine's always does), so a
    draft is never reused across them.
    """
    key = (f"{identity.get('name')}@{identity.get('revision')}/{identity.get('quantization')}"
           f"/{identity.get('dtype')}")
    if identity.get("kernel") or identity.get("decode"):
        key += f"/{identity.get('kernel')}/{identity.get('decode')}"
    return key


def analysis_key(plan: Plan, model_identity: dict, prompt_key: str, context: ClinicalContext) -> str:
    """Cache key of an analysis: the instance read, the model, the prompt version and the context."""
    parts = [plan.selection.sop_instance_uid, model_key(model_identity), prompt_key, context.key()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def run_analysis(
    source: ImageSource,
    plan: Plan,
    *,
    max_pixels: int = MAX_PIXELS,
    min_short_edge: int | None = None,
    on_image: Callable[[RadiographImage], None] | None = None,
    known_undecodable: Callable[[str], Any] | None = None,
    **options: Any,
) -> Analysis:
    """Fetch the planned instance (WADO-RS, one instance) and analyse it with `analyze_image`.

    `max_pixels` refuses larger images (decompression bombs); `min_short_edge` lets JPEG 2000 be
    decoded at a reduced resolution whose short edge is still at least that many pixels. Every other
    keyword (`context`, `generate`, `order`, `template`, `settings`, `score`, ...) goes to
    `analyze_image`; the study's image count picks the report code when the order has none.
    """
    t0 = time.perf_counter()
    image = fetch_radiograph(source, plan.study, plan.selection, max_pixels=max_pixels,
                             min_short_edge=min_short_edge, known_undecodable=known_undecodable)
    fetch_ms = (time.perf_counter() - t0) * 1000.0
    if on_image is not None:            # e.g. keep a rendition of the image read for the review page
        on_image(image)
    options.setdefault("view_count", len(plan.selection.considered) or None)
    analysis = analyze_image(image, **options)
    analysis.timings["fetch_decode_ms"] = round(fetch_ms, 1)
    return analysis


def analyze_image(
    image: RadiographImage,
    *,
    context: ClinicalContext,
    generate: Generate,
    order: OrderInfo | None = None,
    patient_reference: str | None = None,
    encounter_reference: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    settings: GenerationSettings | None = None,
    score: Score | None = None,
    view_count: int | None = None,
    now: datetime | None = None,
) -> Analysis:
    """Run the model on one 8-bit radiograph and turn its report into coded findings and a FHIR draft.

    Parameters
    ----------
    image : imaging.RadiographImage
        The decoded frontal radiograph; `image.pixels` is (H, W) uint8, MONOCHROME2.
    context : prompts.ClinicalContext
        What the prompt may say about the patient (no identifiers).
    generate : callable
        `GenerationRequest -> GenerationResult`, e.g. `InferenceWorker.run`.
    order, patient_reference, encounter_reference
        What the FHIR draft points back to (`basedOn`, `subject`, `encounter`).
    template : str
        Prompt template id with version, e.g. ``"report_context.v1"``.
    score : callable, optional
        `(image, prompts) -> P(yes)` per finding question; adds `scores` to the result.
    view_count : int, optional
        Images in the study; picks the report code (2 views / single view) when the order has none.

    Returns
    -------
    Analysis
    """
    timings: dict[str, float] = {}
    issued = now or datetime.now(timezone.utc)

    prompt = render(template, context)
    result = generate(GenerationRequest(image=image.pixels, prompt=prompt,
                                        settings=settings or GenerationSettings()))
    timings.update({k: round(float(v), 1) for k, v in result.timings.items()})

    t0 = time.perf_counter()
    findings = extract_findings(result.text)
    timings["findings_ms"] = round((time.perf_counter() - t0) * 1000.0, 1)

    model = dict(result.model)
    # why generation stopped travels with the draft: "length" = cut at the token cap (an unfinished report)
    model["finish_reason"] = result.finish_reason
    scores = None
    if score is not None:
        questions = finding_questions(context)
        probs = score(image.pixels, list(questions.values()))
        scores = {name: round(float(p), 4) for name, p in zip(questions, probs)}
        model["scores_prompt"] = next(iter(questions.values())).key   # e.g. "finding_question.v1"

    t0 = time.perf_counter()
    draft_id = str(uuid.uuid4())
    study = image.study_json()
    bundle = build_draft(
        DraftInputs(
            report_text=result.text,
            findings=findings,
            study_instance_uid=image.study_instance_uid,
            accession_number=image.accession_number,
            study_date=image.study_date,
            view_position=image.view_position,
            order=order,
            patient_reference=patient_reference,
            encounter_reference=encounter_reference,
            model=model,
            issued=issued,
            draft_id=draft_id,
            scores=scores,
            view_count=view_count,
            finish_reason=result.finish_reason,
        )
    )
    timings["fhir_ms"] = round((time.perf_counter() - t0) * 1000.0, 1)

    report = next(e["resource"] for e in bundle["entry"]
                  if e["resource"]["resourceType"] == "DiagnosticReport")
    return Analysis(
        analysis_id=draft_id,
        report_text=result.text,
        findings=findings,
        bundle=bundle,
        diagnostic_report=report,
        study=study,
        model=model,
        context_key=context.key(),
        timings=timings,
        scores=scores,
        created=issued,
    )
