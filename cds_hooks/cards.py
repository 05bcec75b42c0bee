"""CDS Hooks cards built from a stored analysis (its parsed findings, never raw model text alone).

Pure: values in, card dicts out. Every card carries a ``uuid`` (feedback needs it), a summary of
at most 139 characters naming the findings the report calls present *or uncertain*, an
``indicator`` from them (an uncertain critical finding is ``critical``), a short markdown
``detail`` (disclaimer, one capped quoted phrase per finding, study date and view, model line) in
which everything the model wrote is escaped and stripped of control characters, a ``source``
with label and absolute url, ``overrideReasons`` and a signed link to the review page. Only a draft for the *ordered* study whose DICOM PatientID matched one of the
Patient's MRNs carries the ``create`` DiagnosticReport suggestion; a prior study's card is labelled
as a prior with its date and suggests nothing.
No value is ever ``None`` or empty (CDS Hooks 2.0: omit instead).
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping

from fhir_mapping import for_patient, with_comparison
from prompts.compare import Comparison
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
DISCLAIMER = ("**AI-generated draft for clinician review, not a final report**: review the images "
              "before acting; the model can miss or invent findings.")


@dataclass(frozen=True)
class CardSettings:
    """What the card builder needs from the service settings and the request.

    ``review_link(analysis_id, card_uuid[, prior_analysis_id]) -> url`` makes the signed, expiring review-page URL
    (naming the compared prior's draft when there is one) that
    every card about an analysis links to (``cds_hooks.review``); None: no link (unit tests, tools).
    """

    base_url: str                          # public base URL, no trailing slash
    source_label: str
    source_url: str
    critical_findings: tuple[str, ...] = ("pneumothorax",)
    review_link: Callable[..., str] | None = None


def _label(name: str) -> str:
    return name.replace("_or_", " or ").replace("_", " ")


def _finding_phrase(f: Any) -> str:
    words = [w for w in (f.severity, f.laterality, _label(f.name)) if w]
    return " ".join(words)


def _order(critical: Iterable[str]) -> Callable[[Any], tuple[bool, int]]:
    """Sort key: critical findings first, then the primary order."""
    critical = set(critical)
    rank = {n: i for i, n in enumerate(PRIMARY_FINDINGS)}
    return lambda f: (f.name not in critical, rank.get(f.name, len(rank)))


def named_findings(findings: Any, critical: Iterable[str] = ()) -> list[Any]:
    """Abnormal findings the report calls present, then those it calls uncertain; critical ones first in each.

    An uncertain finding ("cannot exclude a pneumothorax") is a safety signal: it is named on the
    card and raises the indicator like a present one.
    """
    key = _order(critical)
    named = [f for f in findings if f.presence in ("present", "uncertain") and f.name not in _NEUTRAL]
    return (sorted((f for f in named if f.presence == "present"), key=key)
            + sorted((f for f in named if f.presence == "uncertain"), key=key))


def indicator_for(findings: Any, critical: Iterable[str]) -> Indicator:
    """``critical`` for a present or uncertain critical finding, ``warning`` for other named ones, else ``info``."""
    named = named_findings(findings)
    if any(f.name in set(critical) for f in named):
        return "critical"
    return "warning" if named else "info"


def _leading(findings: Any, critical: Iterable[str]) -> str:
    named = named_findings(findings, critical)
    if named:
        return "; ".join(("possible " if f.presence == "uncertain" else "") + _finding_phrase(f) for f in named)
    if any(f.name == "no_acute_finding" for f in findings.present()):
        return "no acute finding"
    return "no abnormal finding named"


def fit_summary(text: str, limit: int = SUMMARY_MAX) -> str:
    """Shorten to ``limit`` characters at a separator or word boundary, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    for sep in ("; ", ", ", " "):
        if sep in cut[limit // 2:]:
            cut = cut[: cut.rindex(sep)]
            break
    return cut.rstrip(" ,;:") + "…"


# C0 controls, DEL, C1 controls and U+FFFD (a decoding failure), removed from model text
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
# CommonMark punctuation that can start markup inside a line (model text never starts a line:
# it always follows a label, so list and heading markers need no escape); "<" and ">" become
# entities (no raw HTML, no <autolink>), "&" too (no entity injection)
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def strip_controls(text: str) -> str:
    """Text without control characters (other than tab and newlines) or U+FFFD; whitespace kept."""
    return _CONTROL.sub("", str(text))


def clean_text(text: str) -> str:
    """Model text without control characters or U+FFFD, whitespace collapsed to single spaces."""
    return " ".join(_CONTROL.sub("", str(text)).split())


def markdown_text(text: str) -> str:
    """Free text (model output, error messages) made inert for a Markdown card.

    Control characters and U+FFFD are removed and whitespace collapsed to one line; every
    character that could start Markdown markup (code spans, emphasis, links, images, headings,
    lists, tables, autolinks) is backslash-escaped, and ``&``, ``<``, ``>`` become entities, so no
    raw HTML, link or code span written by the model reaches the EHR.
    """
    escaped = _MD_SPECIAL.sub(r"\\\1", clean_text(text))
    return escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


EVIDENCE_MAX = 80


def short_phrase(text: str, limit: int = EVIDENCE_MAX) -> str:
    """One short phrase of evidence: cleaned, cut at a word boundary to ``limit`` characters with an ellipsis."""
    text = clean_text(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.") + "…"


def _study_line(study: Mapping[str, Any]) -> str:
    """``Study: chest X-ray 2026-11-28, PA view (DX)``: no UIDs or accession (they are on the review page)."""
    when = study.get("study_date") or "undated"
    view = markdown_text(study.get("view_position") or "frontal")
    modality = markdown_text(study.get("modality") or "CR/DX")
    return f"**Study:** chest X-ray {when}, {view} view ({modality})"


_PRESENCE = {"present": "present", "uncertain": "uncertain", "absent": "absent"}


def _findings_lines(findings: Any, critical: Iterable[str]) -> str:
    """Each named finding with one short quoted phrase; the findings reported absent on one line."""
    lines = []
    for f in named_findings(findings, critical):
        text = f"- **{_label(f.name).capitalize()}**: {f.presence}"
        qualifiers = ", ".join(markdown_text(q) for q in (f.severity, f.laterality) if q)
        if qualifiers:
            text += f", {qualifiers}"
        if f.evidence:
            text += f": “{markdown_text(short_phrase(f.evidence))}”"
        lines.append(text)
    absent = [_label(f.name) for f in findings if f.presence == "absent" and f.name not in _NEUTRAL]
    if absent:
        lines.append("- Reported absent: " + ", ".join(absent))
    if not lines:
        named = [f for f in findings.present() if f.name in _NEUTRAL]
        lines.append("- " + (", ".join(_label(f.name).capitalize() for f in named) if named
                             else "No finding was named in the generated report."))
    return "\n".join(lines)


def _ident(value: Any) -> str:
    """A configured identifier (model name, revision, prompt id) reduced to characters inert in Markdown."""
    return re.sub(r"[^\w.:/@+() -]", "", clean_text(value)).strip() or "unknown"


def _model_line(model: Mapping[str, Any]) -> str:
    return (f"Model {_ident(model.get('name'))} (revision {_ident(model.get('revision') or 'unpinned')}); "
            f"prompt {_ident(model.get('prompt_id'))} version {_ident(model.get('prompt_version'))}")


TRUNCATED = ("**The report stopped at the length limit: incomplete.** Findings after the cut-off "
             "are missing; read the images.")


def truncated(model: Mapping[str, Any]) -> bool:
    """Whether generation stopped at the token cap (``finish_reason`` "length"; missing means "eos")."""
    return (model or {}).get("finish_reason", "eos") == "length"


def _common(cfg: CardSettings, analysis: Any, card_uuid: str, *, prior_analysis_id: str | None = None) -> dict:
    common: dict[str, Any] = {
        "source": {"label": cfg.source_label, "url": cfg.source_url},
        "overrideReasons": [{"system": OVERRIDE_SYSTEM, "code": c, "display": d} for c, d in OVERRIDE_REASONS],
    }
    if cfg.review_link is not None:
        # a compared prior's draft is named in the signed link: the page shows both images side by side
        url = (cfg.review_link(analysis.analysis_id, card_uuid, prior_analysis_id) if prior_analysis_id
               else cfg.review_link(analysis.analysis_id, card_uuid))
        common["links"] = [{"label": "Review the AI draft: image, evidence, agree or correct",
                            "url": url, "type": "absolute"}]
    return common


def _report_with_prior(report: dict, prior: PriorComparison) -> dict:
    """The suggested DiagnosticReport with the comparison (or why there is none) recorded."""
    from datetime import date

    when = date.fromisoformat(prior.prior_date) if prior.prior_date else None
    if prior.status == "compared" and prior.comparison is not None and prior.prior_study_instance_uid:
        return with_comparison(report, prior.comparison, prior_study_instance_uid=prior.prior_study_instance_uid,
                               prior_date=when)
    of = f" of {prior.prior_date}" if prior.prior_date else ""
    reason = f" ({clean_text(prior.reason)})" if prior.reason else ""
    note = {"none": f"none (no earlier chest radiograph within {prior.max_days} days).",
            "pending": f"not made: the prior study{of} had no AI draft yet when this draft was offered.",
            "unreadable": f"not made: the prior study{of} could not be read by the AI{reason}.",
            "unavailable": f"not made: earlier studies could not be looked up{reason}.",
            "other_version": f"not made: the prior study's AI draft{of} is by another model or prompt version.",
            }.get(prior.status, "not made.")
    return with_comparison(report, None, note=note)


def _detail(analysis: Any, cfg: CardSettings, *notes: str) -> str:
    """The short detail: disclaimer, notes, the named findings with one quoted phrase each, study, model."""
    parts = [DISCLAIMER, *notes,
             TRUNCATED if truncated(analysis.model) else "",
             "**Findings (from the generated report):**\n" + _findings_lines(analysis.findings, cfg.critical_findings),
             _study_line(analysis.study) + "  \n" + _model_line(analysis.model)]
    return "\n\n".join(p for p in parts if p)


# --- the comparison with the prior study (two AI drafts compared, not the images) -----------------------
PriorStatus = Literal["compared", "none", "pending", "unreadable", "unavailable", "other_version"]


@dataclass(frozen=True)
class PriorComparison:
    """What a draft card says about the prior study: the comparison, or in one line why there is none.

    ``status``: ``compared`` (``comparison`` set), ``none`` (no earlier chest radiograph within
    ``max_days``), ``pending`` (the prior's draft, or the PACS search, is not finished), ``unreadable``
    (the prior's analysis failed: ``reason``), ``unavailable`` (the prior could not be looked up:
    ``reason``), ``other_version`` (the two drafts are by different model or prompt versions).
    ``reason`` is identifier-free (an error code and our own message).
    """

    status: PriorStatus
    prior_date: str | None = None                  # ISO date of the prior study
    comparison: Comparison | None = None
    prior_study_instance_uid: str | None = None
    prior_analysis_id: str | None = None
    reason: str | None = None
    max_days: int = 365


#: The card's words for each change, and the order the change line names them in.
_CHANGE_WORDS = {"new": "new", "worse": "worse", "resolved": "resolved", "better": "better",
                 "unchanged": "unchanged", "not_comparable": "not comparable"}
COMPARED_NOTICE = "two AI drafts compared, not the images"


def _change_phrase(item: Any) -> str:
    word = _CHANGE_WORDS[item.change]
    if item.change == "resolved":
        return f"{word} {markdown_text(_finding_phrase(item.prior))}"
    if item.change in ("worse", "better", "not_comparable"):
        return f"{word} {_label(item.name)} ({markdown_text(item.reason)})"
    return f"{word} {markdown_text(_finding_phrase(item.current))}"


def change_line(prior: PriorComparison) -> str:
    """The card's one line about the prior: ``Change since 2026-11-20 (...): new right pleural effusion; ...``.

    New and worse findings first, then resolved, better, unchanged (present in both), not comparable.
    """
    when = prior.prior_date or "an undated prior"
    if prior.status == "none":
        return f"No earlier chest radiograph within {prior.max_days} days to compare with."
    if prior.status == "pending":
        if prior.prior_date:
            return (f"Comparison with the prior of {prior.prior_date} pending: its AI draft is being made; "
                    "the next time this order or chart is opened shows the change.")
        return ("Comparison with an earlier chest radiograph pending: the PACS search for earlier studies did "
                "not finish in time; the next call shows it.")
    if prior.status == "unreadable":
        return (f"No comparison: the prior chest radiograph of {when} could not be read by the AI "
                f"({markdown_text(prior.reason or 'analysis failed')}).")
    if prior.status == "unavailable":
        return ("No comparison with an earlier chest radiograph: it could not be looked up "
                f"({markdown_text(prior.reason or 'PACS search failed')}).")
    if prior.status == "other_version":
        return (f"No comparison: the prior's AI draft of {when} was made by another model or prompt version; "
                "it is drafted again for the next call.")
    assert prior.comparison is not None
    items = [i for i in prior.comparison.ordered()
             if not (i.change == "unchanged" and i.current.presence != "present")]
    said = "; ".join(_change_phrase(i) for i in items) or "no change in the findings the two drafts name"
    return f"**Change since {when}** ({COMPARED_NOTICE}): {said}."


def _change_evidence(prior: PriorComparison) -> str:
    """One bullet per new, worse, resolved or better finding: the phrase of each report."""
    if prior.status != "compared" or prior.comparison is None:
        return ""
    lines = []
    for item in prior.comparison.of("new", "worse", "resolved", "better"):
        now = f"now “{markdown_text(short_phrase(item.current_evidence))}”" if item.current_evidence else "now not stated"
        before = (f"before “{markdown_text(short_phrase(item.prior_evidence))}”" if item.prior_evidence
                  else "before not stated")
        lines.append(f"- {_label(item.name).capitalize()} ({_CHANGE_WORDS[item.change]}): {now}; {before}")
    return "\n".join(lines)


def _rise(indicator: Indicator, prior: PriorComparison | None, critical: Iterable[str]) -> Indicator:
    """``critical`` when a critical finding is new (or worse) since the prior; otherwise unchanged."""
    if prior is None or prior.comparison is None:
        return indicator
    if any(i.name in set(critical) for i in prior.comparison.of("new", "worse")):
        return "critical"
    return indicator


UNVERIFIED_PATIENT = ("**The patient match could not be verified**: the EHR sent no medical record number "
                      "usable as a DICOM PatientID, or the PACS did not return the study's PatientID, so this "
                      "draft is shown for reading only and is not offered for the chart. Check that the image "
                      "is this patient's before relying on it.")


def draft_card(analysis: Any, cfg: CardSettings, *, patient_id: str, encounter_id: str | None = None,
               verified: bool = True, context_note: str | None = None,
               prior: PriorComparison | None = None) -> dict:
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
    prior : PriorComparison, optional
        The comparison with the prior study's AI draft (or why there is none): one line on the card, the
        indicator raised for a new critical finding, and recorded in the suggested DiagnosticReport
        (``fhir_mapping.with_comparison``). None: no prior was looked up (no line).

    Returns
    -------
    dict
        A CDS Hooks 2.0 card.
    """
    study, findings = analysis.study, analysis.findings
    label = "AI draft" if verified else "AI draft (patient match unverified)"
    summary = fit_summary(f"{label}, chest X-ray {study.get('study_date') or ''}: "
                          f"{_leading(findings, cfg.critical_findings)}".replace("  ", " "))
    # the stored draft holds no patient reference: this caller's copy (report and its contained
    # Observations) gets subject and encounter; the stored one is never mutated
    report = for_patient(analysis.diagnostic_report, patient_reference=f"Patient/{patient_id}",
                         encounter_reference=f"Encounter/{encounter_id}" if encounter_id else None)
    if prior is not None:
        report = _report_with_prior(report, prior)
    card_uuid = str(uuid.uuid4())
    notes = ["" if verified else UNVERIFIED_PATIENT, context_note or ""]
    if prior is not None:
        notes += [change_line(prior), _change_evidence(prior)]
    card = {
        "uuid": card_uuid,
        "summary": summary,
        "indicator": _rise(indicator_for(findings, cfg.critical_findings), prior, cfg.critical_findings),
        "detail": _detail(analysis, cfg, *notes),
        **_common(cfg, analysis, card_uuid, prior_analysis_id=prior.prior_analysis_id if prior else None),
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
    card_uuid = str(uuid.uuid4())
    return {
        "uuid": card_uuid,
        "summary": summary,
        "indicator": indicator_for(findings, cfg.critical_findings) if latest else "info",
        "detail": _detail(analysis, cfg, intro, context_note or ""),
        **_common(cfg, analysis, card_uuid),
    }


#: What happens to a running analysis, by hook: the pending card must not promise a draft that won't come.
_PENDING_NEXT: dict[str, str] = {
    "order-select": ("The AI analysis is running in the background; the draft will be offered when this "
                     "order is signed (or selected again)."),
    "order-sign": ("The AI analysis is running in the background; it is stored when ready and shown the next "
                   "time this order or the patient's chart is opened. It is not added to the chart unless a "
                   "clinician accepts it."),
    "patient-view": ("The AI analysis of the patient's most recent chest radiograph is running in the background; "
                     "its findings will be shown the next time the chart is opened."),
}
_PENDING_PRIOR = ("The AI analysis of this PRIOR study is running in the background; its findings will be shown "
                  "on a later call. The study just ordered is not in the PACS yet: no draft of it can be offered "
                  "until it arrives.")


def pending_card(cfg: CardSettings, *, study: Mapping[str, Any] | None = None, hook: str = "order-select",
                 prior: bool = False) -> dict:
    """Info card: the analysis of ``study`` is running; says what will happen for this ``hook``.

    ``prior``: the running analysis is of a prior study (on an order hook) or of the latest one
    (patient-view), so no draft of the ordered study is promised. Without a study (the deadline
    passed while the EHR data and the PACS were still being queried) the wording is neutral:
    nothing is known to be in preparation yet.
    """
    if not study:
        later = ("a later call (for example at order signing)" if hook == "order-select"
                 else "the next time the chart or this order is opened")
        return {
            "uuid": str(uuid.uuid4()),
            "summary": "AI draft not available yet; try again shortly",
            "indicator": "info",
            "detail": ("The service did not finish looking up the ordered chest radiograph (EHR data and "
                       "PACS) within its time budget. The lookup goes on in the background; if the study "
                       f"can be analysed, {later} will show the result."
                       if hook != "patient-view" else
                       "The service did not finish looking up the patient's chest radiographs (EHR data and "
                       "PACS) within its time budget. The lookup goes on in the background; the next time "
                       "the chart is opened will show the result."),
            "source": {"label": cfg.source_label, "url": cfg.source_url},
        }
    what = "chest X-ray"
    if study.get("study_date"):
        what += f" of {study['study_date']}"
    if prior and hook != "patient-view":
        summary, text = f"AI findings in preparation for the prior {what}", _PENDING_PRIOR
    elif hook == "patient-view":
        summary, text = f"AI findings in preparation for the {what}", _PENDING_NEXT["patient-view"]
    else:
        summary, text = f"AI draft in preparation for the {what}", _PENDING_NEXT.get(hook, _PENDING_NEXT["order-sign"])
    return {
        "uuid": str(uuid.uuid4()),
        "summary": fit_summary(summary),
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
    """Names of the findings the report calls present or uncertain (for feedback counts per finding)."""
    return [f.name for f in analysis.findings if f.presence in ("present", "uncertain")]
