"""CDS Hooks cards built from a stored analysis (its parsed findings, never raw model text alone).

Pure: values in, card dicts out. Every card carries a ``uuid`` (feedback needs it), a summary of
at most 139 characters, an ``indicator`` from the findings' severity, a markdown ``detail``
without raw HTML, a ``source`` with label and absolute url, ``overrideReasons`` and a link to the
stored draft. Only a draft for the *ordered* study whose DICOM PatientID matched one of the
Patient's MRNs carries the ``create`` DiagnosticReport suggestion; a prior study's card is labelled
as a prior with its date and suggests nothing.
No value is ever ``None`` or empty (CDS Hooks 2.0: omit instead).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping

from prompts.findings import PRIMARY_FINDINGS

Indicator = Literal["info", "warning", "critical"]
CardKind = Literal["draft", "prior", "latest", "pending", "notice", "mismatch"]

SUMMARY_MAX = 139
# findings that are not an abnormality: they never raise the indicator or lead the summary
_NEUTRAL = frozenset({"no_acute_finding", "support_devices"})
OVERRIDE_SYSTEM = "urn:cxr-cds:cds-hooks:override-reason"
OVERRIDE_REASONS: tuple[tuple[str, str], ...] = (
    ("disagree", "AI findings disagree with my reading of the image"),
    ("wrong-study", "Wrong or unsuitable image was analysed"),
    ("not-relevant", "Not relevant to this order"),
    ("already-reviewed", "Images already reviewed by radiology"),
)
DISCLAIMER = ("**AI-generated draft for clinician review, not a final report.** Review the images "
              "before acting; the model can miss or invent findings.")


@dataclass(frozen=True)
class CardSettings:
    """What the card builder needs from the service settings and the request."""

    base_url: str                          # public base URL, no trailing slash
    source_label: str
    source_url: str
    critical_findings: tuple[str, ...] = ("pneumothorax",)


def _label(name: str) -> str:
    return name.replace("_or_", " or ").replace("_", " ")


def _finding_phrase(f: Any) -> str:
    words = [w for w in (f.severity, f.laterality, _label(f.name)) if w]
    return " ".join(words)


def _abnormal(findings: Any) -> list[Any]:
    """Present abnormal findings, most important first (critical ones, then the primary order)."""
    order = {n: i for i, n in enumerate(PRIMARY_FINDINGS)}
    present = [f for f in findings.present() if f.name not in _NEUTRAL]
    return sorted(present, key=lambda f: order.get(f.name, len(order)))


def indicator_for(findings: Any, critical: Iterable[str]) -> Indicator:
    """``critical`` if a critical finding is present, ``warning`` for other abnormal findings, else ``info``."""
    abnormal = _abnormal(findings)
    if any(f.name in set(critical) for f in abnormal):
        return "critical"
    return "warning" if abnormal else "info"


def _leading(findings: Any, critical: Iterable[str]) -> str:
    abnormal = sorted(_abnormal(findings), key=lambda f: f.name not in set(critical))
    if abnormal:
        return ", ".join(_finding_phrase(f) for f in abnormal)
    if any(f.name == "no_acute_finding" for f in findings.present()):
        return "no acute finding"
    return "no abnormal finding named"


def fit_summary(text: str, limit: int = SUMMARY_MAX) -> str:
    """Shorten to ``limit`` characters at a comma or word boundary, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    for sep in (", ", " "):
        if sep in cut[limit // 2:]:
            cut = cut[: cut.rindex(sep)]
            break
    return cut.rstrip(" ,;:") + "…"


def markdown_text(text: str) -> str:
    """Free text (model output, error messages) as markdown-safe text: no raw HTML tags reach the EHR."""
    return " ".join(str(text).replace("<", "&lt;").replace(">", "&gt;").split())


def _study_line(study: Mapping[str, Any]) -> str:
    parts = [f"{study.get('modality') or 'CR/DX'} {study.get('view_position') or 'frontal'} view"]
    if study.get("study_date"):
        parts.append(f"dated {study['study_date']}")
    if study.get("accession_number"):
        parts.append(f"accession {study['accession_number']}")
    line = ", ".join(parts) + f"; StudyInstanceUID `{study.get('study_instance_uid')}`"
    selected = study.get("selected")
    reason = study.get("selection_reason") or (selected.get("reason") if isinstance(selected, Mapping) else None)
    if reason:
        line += f" ({markdown_text(reason)})"
    return line


def _findings_lines(findings: Any) -> str:
    lines = []
    for f in findings.mentioned():
        text = f"- **{_label(f.name).capitalize()}**: {f.presence}"
        qualifiers = ", ".join(q for q in (f.laterality, f.severity) if q)
        if qualifiers:
            text += f" ({qualifiers})"
        if f.evidence:
            text += f": “{markdown_text(f.evidence)}”"
        lines.append(text)
    return "\n".join(lines) or "- No finding was named in the generated report."


SCORES_HEADING = ("**Model probabilities** (the model's P(yes) to one yes/no question per finding; "
                  "uncalibrated model outputs, not a risk of disease):")
_IN_REPORT = {"present": "present in report", "absent": "absent in report",
              "uncertain": "uncertain in report", "not_mentioned": "not mentioned in report"}


def _scores_lines(findings: Any, scores: Mapping[str, float] | None) -> str:
    """Each primary finding with a score: its presence in the report and the model's P(yes); "" if none."""
    lines = []
    for name in PRIMARY_FINDINGS:
        if not scores or scores.get(name) is None:
            continue
        try:
            presence = findings[name].presence
        except KeyError:
            presence = "not_mentioned"
        lines.append(f"- {_label(name).capitalize()}: {_IN_REPORT.get(presence, presence)}; "
                     f"model P(yes) {float(scores[name]):.2f}")
    return SCORES_HEADING + "\n" + "\n".join(lines) if lines else ""


def _model_line(model: Mapping[str, Any]) -> str:
    return (f"Model {model.get('name')} (revision {model.get('revision') or 'unpinned'}, "
            f"{model.get('dtype') or 'default dtype'}, quantization {model.get('quantization') or 'none'}); "
            f"prompt {model.get('prompt_id')} version {model.get('prompt_version')}.")


def _common(cfg: CardSettings, analysis: Any) -> dict:
    return {
        "source": {"label": cfg.source_label, "url": cfg.source_url},
        "overrideReasons": [{"system": OVERRIDE_SYSTEM, "code": c, "display": d} for c, d in OVERRIDE_REASONS],
        "links": [{"label": "Open the stored AI draft (JSON)",
                   "url": f"{cfg.base_url}/drafts/{analysis.analysis_id}", "type": "absolute"}],
    }


UNVERIFIED_PATIENT = ("**The patient match could not be verified**: the EHR sent no medical record number "
                      "usable as a DICOM PatientID, or the PACS did not return the study's PatientID, so this "
                      "draft is shown for reading only and is not offered for the chart. Check that the image "
                      "is this patient's before relying on it.")


def draft_card(analysis: Any, cfg: CardSettings, *, patient_id: str, encounter_id: str | None = None,
               verified: bool = True, context_note: str | None = None) -> dict:
    """The card for the ordered study: findings, study read, and a ``create`` DiagnosticReport suggestion.

    Parameters
    ----------
    analysis : cds_hooks.pipeline.Analysis
        The stored analysis of the ordered study.
    cfg : CardSettings
    patient_id : str
        ``context.patientId``: the DiagnosticReport's ``subject`` (added to this card's copy only;
        stored analyses hold no patient reference).
    encounter_id : str, optional
        ``context.encounterId``, for ``DiagnosticReport.encounter``.
    verified : bool
        Whether the study's DICOM PatientID was found among the Patient's MRNs. When it could not be
        checked (no MRN, or no PatientID from the PACS) the card says so and carries **no** suggestion:
        nothing unverified is offered for the chart.
    context_note : str, optional
        A markdown sentence shown after the disclaimer (e.g. the draft was made without the order's context).

    Returns
    -------
    dict
        A CDS Hooks 2.0 card.
    """
    study, findings = analysis.study, analysis.findings
    label = "AI draft" if verified else "AI draft (patient match unverified)"
    summary = fit_summary(f"{label}, chest X-ray {study.get('study_date') or ''}: "
                          f"{_leading(findings, cfg.critical_findings)}".replace("  ", " "))
    # a shallow copy is enough: only top-level keys are set here, nested values are never mutated
    report = dict(analysis.diagnostic_report)
    report["subject"] = {"reference": f"Patient/{patient_id}"}
    if encounter_id:
        report["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    detail = "\n\n".join([
        DISCLAIMER,
        "" if verified else UNVERIFIED_PATIENT,
        context_note or "",
        f"**Study read:** {_study_line(study)}",
        "**Findings (from the generated report):**\n" + _findings_lines(findings),
        _scores_lines(findings, getattr(analysis, "scores", None)),
        f"**Generated report:** {markdown_text(analysis.report_text)}" if analysis.report_text.strip() else "",
        _model_line(analysis.model),
    ])
    card = {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": indicator_for(findings, cfg.critical_findings),
        "detail": "\n\n".join(p for p in detail.split("\n\n") if p),
        **_common(cfg, analysis),
    }
    if not verified:
        return card
    card.update({
        "selectionBehavior": "at-most-one",
        "suggestions": [{
            "label": "Add the preliminary AI draft report to the chart for review",
            "uuid": str(uuid.uuid4()),
            "isRecommended": False,
            "actions": [{
                "type": "create",
                "description": ("Create a preliminary (AI-generated, not radiologist-reviewed) "
                                f"DiagnosticReport for study {study.get('study_instance_uid')}"),
                "resource": report,
            }],
        }],
    })
    return card


#: Why the ordered study was not read, for the prior card's wording.
OrderedStudy = Literal["not-acquired", "no-accession", "unmatched"]
_PRIOR_INTRO: dict[str, str] = {
    "not-acquired": ("**This is a PRIOR study from {when}, not the study just ordered**, which is not in the "
                     "PACS yet (not acquired yet, or not yet sent)."),
    "no-accession": ("**This is a PRIOR study from {when}.** The order carries no accession number, so the "
                     "study just ordered could not be looked up in the PACS."),
    "unmatched": ("**This is a PRIOR study from {when}, not the study just ordered**, which could not be "
                  "matched in the PACS."),
}


def prior_card(analysis: Any, cfg: CardSettings, *, latest: bool = False,
               ordered: OrderedStudy = "not-acquired", context_note: str | None = None) -> dict:
    """An info card with a prior (or, on patient-view, the latest) study's AI findings; no suggestion.

    ``ordered`` says why the ordered study itself was not read (the wording differs when the order had
    no accession number); ``context_note`` as for :func:`draft_card`.
    """
    study, findings = analysis.study, analysis.findings
    when = study.get("study_date") or "undated"
    label = "Latest chest X-ray" if latest else "Prior chest X-ray"
    summary = fit_summary(f"{label} {when} (AI findings): {_leading(findings, cfg.critical_findings)}")
    intro = ("This is the patient's most recent chest radiograph on file."
             if latest else _PRIOR_INTRO[ordered].format(when=when))
    detail = "\n\n".join(p for p in [
        DISCLAIMER, intro, context_note or "",
        f"**Study read:** {_study_line(study)}",
        "**Findings (from the generated report):**\n" + _findings_lines(findings),
        _scores_lines(findings, getattr(analysis, "scores", None)),
        _model_line(analysis.model),
    ] if p)
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": indicator_for(findings, cfg.critical_findings) if latest else "info",
        "detail": detail,
        **_common(cfg, analysis),
    }


def pending_card(cfg: CardSettings, *, study: Mapping[str, Any] | None = None) -> dict:
    """Info card: the analysis of ``study`` is running and the next hook call will get it.

    Without a study (the deadline passed while the EHR data and the PACS were still being queried)
    the wording is neutral: nothing is known to be in preparation yet.
    """
    if not study:
        return {
            "uuid": str(uuid.uuid4()),
            "summary": "AI draft not available yet; try again shortly",
            "indicator": "info",
            "detail": ("The service did not finish looking up the ordered chest radiograph (EHR data and "
                       "PACS) within its time budget. The lookup goes on in the background; if the study "
                       "can be analysed, a later call (for example at order signing) will offer the draft."),
            "source": {"label": cfg.source_label, "url": cfg.source_url},
        }
    what = "chest X-ray"
    if study and study.get("study_date"):
        what += f" of {study['study_date']}"
    text = ("The AI analysis is running in the background; the draft will be offered on the next "
            "call (for example at order signing).")
    if study and study.get("study_instance_uid"):
        text += f" Study: StudyInstanceUID `{study['study_instance_uid']}`."
    return {
        "uuid": str(uuid.uuid4()),
        "summary": fit_summary(f"AI draft in preparation for the {what}"),
        "indicator": "info",
        "detail": text,
        "source": {"label": cfg.source_label, "url": cfg.source_url},
    }


def patient_mismatch_card(cfg: CardSettings, accession_number: str) -> dict:
    """Warning card: the study found for the order's accession number is another patient's; no draft.

    Names only the accession number (the order's own value), never either patient's identifiers.
    """
    accession = markdown_text(accession_number)
    return {
        "uuid": str(uuid.uuid4()),
        "summary": fit_summary(f"No AI draft: the study for accession {accession} belongs to a different patient"),
        "indicator": "warning",
        "detail": (f"The study found for accession {accession} belongs to a different patient in the PACS; "
                   "no AI draft offered: check the order's accession number.\n\n"
                   "The study's DICOM PatientID matches none of this patient's medical record numbers."),
        "source": {"label": cfg.source_label, "url": cfg.source_url},
    }


def notice_card(cfg: CardSettings, summary: str, detail: str) -> dict:
    """Info card that explains why no AI draft could be made (archive down, model error, no frontal view)."""
    return {
        "uuid": str(uuid.uuid4()),
        "summary": fit_summary(summary),
        "indicator": "info",
        "detail": detail,
        "source": {"label": cfg.source_label, "url": cfg.source_url},
    }


def present_findings(analysis: Any) -> list[str]:
    """Names of the present findings (for feedback counts per finding)."""
    return [f.name for f in analysis.findings.present()]
