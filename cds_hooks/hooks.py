"""The CDS Hooks surface: discovery, the three services, and feedback (one blueprint).

A hook call reads top to bottom: parse and check the request -> pick the chest X-ray orders ->
gather Patient/Conditions/Encounter (prefetch, else allowlisted fhirServer; 412 if the Patient
can't be had) -> find the ordered study by AccessionNumber (QIDO-RS), else the most recent prior
by PatientID -> check the study is this patient's -> a stored analysis or the running one -> cards.
Everything after parsing runs in a worker thread so the hook answers at its deadline whatever the
PACS or the model are doing; late work goes on in the background and the next call gets the stored
result.

Patient safety: an accession number alone does not prove whose image it is. The ordered study's
DICOM PatientID (from QIDO-RS) is compared exactly with the Patient's MRNs
(``fhir_mapping.patient_mrns``): no match -> a warning card and no draft at all (no model run);
no MRN on the Patient, or no PatientID from the PACS -> the draft is shown for reading with a
sentence saying the match could not be verified, and without the ``create`` suggestion (nothing
unverified goes to the chart). Priors are found *by* the MRN, so they match by construction.
``POST /studies/{uid}/analyze`` has no patient: its analyses are stored without any patient
reference and are only attached to a Patient by a hook, after this check.

After parsing, a hook call never answers 500: an unexpected failure becomes 200 with a notice
card, logged with the hookInstance and the exception type and traceback but not its message
(which could carry an identifier).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

from flask import Blueprint, current_app, g, jsonify, request

from cds_hooks import cards, review
from cds_hooks.redact import frames, hook_instance_tag, one_line, scrub
from cds_hooks.context import HookData, gather
from cds_hooks.errors import CdsHooksError
from cds_hooks.feedback import parse_feedback
from cds_hooks.jobs import AnalysisFailed, Obtained
from cds_hooks.pipeline import Plan, model_key
from cds_hooks.services import (HookRequest, Service, candidate_orders, discovery, get_service,
                                is_chest_xray, parse_request)
from fhir_mapping import patient_mrns, read_context, read_order
from imaging import ImagingError, ImagingUnavailable, StudyMatch, StudyNotFound
from prompts import ClinicalContext, compare_findings

log = logging.getLogger(__name__)

bp = Blueprint("cds_hooks", __name__)


#: The context key of a context-free analysis (the study-arrival clock and QIDO-RS polling make those).
_NO_CONTEXT_KEY = ClinicalContext().key()

PatientMatch = Literal["verified", "unverified", "mismatch"]


@dataclass(frozen=True)
class Outcome:
    """What one hook call found for one study: its analysis (stored or running) or why not.

    ``mismatch``: the ordered study is another patient's (``accession_number`` says which order).
    ``context_key`` is this call's clinical-context key, to tell when a stored analysis was made
    with another (or no) context. ``ordered`` says why a prior is shown instead of the ordered study.
    """

    kind: Literal["draft", "prior", "latest", "mismatch"]
    plan: Plan | None = None
    obtained: Obtained | None = None
    error: Exception | None = None
    verified: bool = True
    context_key: str | None = None
    ordered: cards.OrderedStudy = "not-acquired"
    accession_number: str | None = None
    note: str | None = None          # said on the card (e.g. the PACS could not be reached)
    prior: Future | None = None      # -> jobs.PriorLookup: the prior study and its analysis (comparison)


PACS_UNREACHABLE_NOTE = ("**The PACS could not be reached**: this is the stored AI draft of the ordered study; "
                         "the image and its patient match could not be checked again now.")


def _failed_notice(cfg: cards.CardSettings, failure: AnalysisFailed, hook_instance: str) -> dict:
    """A card for a failed analysis; its reason is identifier-free (see ``worker.reason_of``)."""
    if failure.kind == "imaging":
        log.warning("hookInstance=%s no AI draft: %s: %s", hook_instance_tag(hook_instance), failure.code,
                    one_line(failure.message))
        return cards.notice_card(cfg, f"No AI draft: imaging problem ({failure.code})",
                                 "The chest radiograph could not be analysed: "
                                 f"{cards.markdown_text(failure.message)}")
    log.warning("hookInstance=%s no AI draft: %s", hook_instance_tag(hook_instance), failure.code)
    return cards.notice_card(cfg, f"No AI draft: the analysis failed ({failure.code})",
                             "The AI analysis could not be completed; the order is unaffected. "
                             "The service has logged the failure for its operators.")


def patient_match(study: StudyMatch, mrns: tuple[str, ...]) -> PatientMatch:
    """Whether ``study`` is this patient's: its DICOM PatientID among the Patient's MRNs (exact match).

    ``unverified`` when either side is unknown (no PatientID from the PACS, or no MRN on the Patient).
    """
    if not study.patient_id or not mrns:
        return "unverified"
    return "verified" if study.patient_id in mrns else "mismatch"


def evaluate(req: HookRequest, service: Service, state: Any) -> list[Outcome]:
    """The hook's work up to the analyses (FHIR fallback and QIDO-RS; no pixels on this path).

    Raises
    ------
    PreconditionFailed
        The Patient is needed and can't be obtained.
    """
    settings, analyzer = state.settings, state.analyzer
    orders = [o for o in candidate_orders(req) if is_chest_xray(o, settings.cxr_codes)]
    if req.hook != "patient-view" and not orders:
        return []
    data = gather(req, service, allowlist=settings.fhir_allowlist, timeout_s=settings.fhir_timeout_s)
    conditions = list(data.conditions)

    outcomes: list[Outcome] = []
    need_prior = req.hook == "patient-view"
    unread: set[str] = set()                # why ordered studies were not read: the prior card says so
    mrns = patient_mrns(data.patient)
    for order in orders:
        info = read_order(order)
        if not info.accession_number:
            need_prior = True
            unread.add("no-accession")
            continue
        context = read_context(patient=data.patient, service_request=order, conditions=conditions,
                               encounter=data.encounter)
        try:
            plan = analyzer.plan(accession_number=info.accession_number)
        except StudyNotFound:
            need_prior = True               # ordered study not acquired yet
            unread.add("not-acquired")
            continue
        except ImagingUnavailable as e:
            # the PACS is down: a draft already stored for this accession number is still worth showing
            stored = analyzer.stored_for_study(accession_number=info.accession_number)
            if stored is None:
                outcomes.append(Outcome(kind="draft", error=e))
            else:
                outcomes.append(Outcome(kind="draft", obtained=Obtained(key="", analysis=stored), verified=False,
                                        context_key=context.key(), note=PACS_UNREACHABLE_NOTE))
            continue
        except ImagingError as e:
            outcomes.append(Outcome(kind="draft", error=e))
            continue
        match = patient_match(plan.study, mrns)
        if match == "mismatch":
            # no identifiers here: neither the PatientID nor the MRNs nor the accession number
            log.warning("hookInstance=%s the study found for an order's accession number belongs to another "
                        "patient in the PACS; no AI draft", hook_instance_tag(req.hook_instance))
            outcomes.append(Outcome(kind="mismatch", accession_number=info.accession_number))
            continue
        outcomes.append(Outcome(kind="draft", plan=plan,
                                obtained=analyzer.obtain(plan, context, accession_number=info.accession_number),
                                verified=match == "verified", context_key=context.key(),
                                prior=_look_up_prior(analyzer, plan)))

    if need_prior and not any(o.kind == "draft" and o.plan for o in outcomes):
        ordered = unread.pop() if len(unread) == 1 else "unmatched"
        outcomes.extend(_prior(data, state, kind="latest" if req.hook == "patient-view" else "prior",
                               ordered=ordered))
    return outcomes


def _prior(data: HookData, state: Any, *, kind: Literal["prior", "latest"],
           ordered: cards.OrderedStudy) -> list[Outcome]:
    """The most recent CR/DX study found by the patient's MRNs (DICOM PatientID), if any."""
    context = read_context(patient=data.patient, conditions=list(data.conditions), encounter=data.encounter)
    for mrn in patient_mrns(data.patient):
        try:
            plan = state.analyzer.plan(patient_id=mrn)
        except StudyNotFound:
            continue
        except ImagingError as e:
            return [Outcome(kind=kind, error=e)]
        return [Outcome(kind=kind, plan=plan, obtained=state.analyzer.obtain(plan, context),
                        context_key=context.key(), ordered=ordered)]
    return []


#: how long a hook whose draft was stored waits for the prior's analysis before saying "pending"
PRIOR_GRACE_S = 0.3


def _look_up_prior(analyzer: Any, plan: Plan) -> Future | None:
    """Start finding the prior study and obtaining its analysis (QIDO-RS, then stored or queued) in parallel."""
    try:
        return analyzer.hook_pool.submit(analyzer.obtain_prior, plan)
    except RuntimeError:            # the pool is shut down (service stopping): no comparison, nothing fails
        return None


def _same_versions(a: Any, b: Any) -> bool:
    """Whether two analyses were drafted by the same model (``model_key``) and prompt version."""
    return (model_key(a.model) == model_key(b.model)
            and (a.model.get("prompt_id"), a.model.get("prompt_version"))
            == (b.model.get("prompt_id"), b.model.get("prompt_version")))


def _prior_comparison(outcome: Outcome, analysis: Any, state: Any, deadline: float,
                      hook_instance: str) -> cards.PriorComparison:
    """The comparison with the prior study's draft, or in one line why there is none; never raises.

    Computed at hook time from the two stored analyses (not stored itself). Waits for the prior's
    analysis at most until the hook's ``deadline``, and only briefly (``PRIOR_GRACE_S``) when the current
    draft was already stored: a stored draft answers fast, and a prior still being analysed says
    "pending" (the job goes on; the next call carries the comparison).
    """
    from cds_hooks.store import QueueFull

    if outcome.obtained is not None and outcome.obtained.stored:
        deadline = min(deadline, time.monotonic() + PRIOR_GRACE_S)
    max_days = state.settings.prior_max_days
    tag = hook_instance_tag(hook_instance)
    try:
        lookup = outcome.prior.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        return cards.PriorComparison("pending", max_days=max_days)
    except ImagingError as e:
        log.info("hookInstance=%s no comparison with a prior: %s: %s", tag, e.code, scrub(one_line(str(e))))
        return cards.PriorComparison("unavailable", reason=e.code, max_days=max_days)
    except QueueFull:
        log.info("hookInstance=%s prior's analysis not queued: the job queue is full", tag)
        return cards.PriorComparison("unavailable", reason="the service is busy", max_days=max_days)
    except Exception as e:          # a bug or a failing store: the draft card stands without a comparison
        _log_unexpected("prior look-up failed", hook_instance, e)
        return cards.PriorComparison("unavailable", reason=type(e).__name__, max_days=max_days)
    if lookup.plan is None:
        return cards.PriorComparison("none", max_days=lookup.max_days)
    when = lookup.plan.study.study_date
    date_text = when.isoformat() if when else None
    try:
        prior = state.analyzer.wait(lookup.obtained, deadline)
    except AnalysisFailed as e:
        log.info("hookInstance=%s prior study not readable: %s", tag, e.code)
        return cards.PriorComparison("unreadable", prior_date=date_text, reason=e.code, max_days=max_days)
    except Exception as e:
        _log_unexpected("waiting for the prior's analysis failed", hook_instance, e)
        return cards.PriorComparison("unavailable", prior_date=date_text, reason=type(e).__name__,
                                     max_days=max_days)
    if prior is None:
        return cards.PriorComparison("pending", prior_date=date_text, max_days=max_days)
    if not _same_versions(analysis, prior):
        return cards.PriorComparison("other_version", prior_date=date_text, max_days=max_days)
    return cards.PriorComparison(
        "compared", prior_date=date_text, max_days=max_days,
        comparison=compare_findings(analysis.findings, prior.findings, prior_date=when),
        prior_study_instance_uid=prior.study.get("study_instance_uid") or lookup.plan.study.study_instance_uid,
        prior_analysis_id=prior.analysis_id)


def _card_settings(state: Any) -> cards.CardSettings:
    base = state.base_url()
    return cards.CardSettings(base_url=base, source_label=state.settings.source_label,
                              source_url=state.settings.source_url or f"{base}/cds-services",
                              critical_findings=state.settings.critical_findings,
                              review_link=review.link_maker(base))


def _notice(cfg: cards.CardSettings, error: BaseException, hook_instance: str) -> dict:
    code = getattr(error, "code", type(error).__name__)
    if isinstance(error, (ImagingError, CdsHooksError)):     # messages written to be identifier-free
        log.warning("hookInstance=%s no AI draft: %s: %s", hook_instance_tag(hook_instance), code,
                    scrub(one_line(str(error))))
    else:                                                    # any other message might quote a request value
        log.warning("hookInstance=%s no AI draft: %s", hook_instance_tag(hook_instance), code)
    if isinstance(error, ImagingError):
        return cards.notice_card(cfg, f"No AI draft: imaging problem ({code})",
                                 f"The chest radiograph could not be analysed: {cards.markdown_text(str(error))}")
    return cards.notice_card(cfg, f"No AI draft: the analysis failed ({code})",
                             "The AI analysis could not be completed; the order is unaffected. "
                             "The service has logged the failure for its operators.")


def _context_note(analysis: Any, outcome: Outcome) -> str | None:
    """A sentence for cards whose stored analysis was made with another clinical context than this call's.

    The hook reuses any stored analysis of the same image, model and prompt (that is what keeps it
    fast), most often the context-free one made when the study arrived: the card must say so.
    """
    if outcome.context_key is None or analysis.context_key == outcome.context_key:
        return None
    whose = "the order's" if outcome.kind == "draft" else "the patient's"
    if analysis.context_key == _NO_CONTEXT_KEY:
        return (f"**Drafted without {whose} clinical context**: the model read this image when the study "
                "arrived in the PACS, before the clinical information (age, sex, reason for the order, "
                "conditions) was available to it.")
    return (f"**Drafted with another request's clinical context**, not {whose}: the stored draft of this image "
            "was reused rather than running the model again.")


@dataclass(frozen=True)
class Answer:
    """One card of the response, with what it is about (for metrics, the audit and feedback)."""

    kind: str                    # draft | prior | latest | pending | notice
    card: dict
    analysis_id: str | None = None


def _answers(outcomes: list[Outcome], req: HookRequest, service: Service, state: Any,
             deadline: float) -> list[Answer]:
    cfg = _card_settings(state)
    out: list[Answer] = []
    for outcome in outcomes:
        if outcome.error is not None:
            out.append(Answer("notice", _notice(cfg, outcome.error, req.hook_instance)))
            continue
        if outcome.kind == "mismatch":
            out.append(Answer("mismatch", cards.patient_mismatch_card(cfg, outcome.accession_number or "?")))
            continue
        analysis = outcome.obtained.analysis
        if analysis is None:
            try:
                analysis = state.analyzer.wait(outcome.obtained, deadline)
            except AnalysisFailed as e:         # the analysis failed: why, on a card (never a 500)
                out.append(Answer("notice", _failed_notice(cfg, e, req.hook_instance)))
                continue
            if analysis is None:
                if state.settings.pending_card:
                    out.append(Answer("pending", cards.pending_card(cfg, study={
                        "study_instance_uid": outcome.plan.study.study_instance_uid,
                        "study_date": outcome.plan.study.study_date}, hook=req.hook,
                        prior=outcome.kind != "draft")))
                continue
        note = " ".join(n for n in (outcome.note, _context_note(analysis, outcome)) if n) or None
        if outcome.kind == "draft":
            prior = (None if outcome.prior is None
                     else _prior_comparison(outcome, analysis, state, deadline, req.hook_instance))
            card = cards.draft_card(analysis, cfg, patient_id=req.patient_id, encounter_id=req.encounter_id,
                                    verified=outcome.verified, context_note=note, prior=prior)
        else:
            card = cards.prior_card(analysis, cfg, latest=outcome.kind == "latest", ordered=outcome.ordered,
                                    context_note=note)
        state.runtime.store.put_card(card["uuid"], service_id=service.id, analysis_id=analysis.analysis_id,
                                     kind=outcome.kind, findings=cards.present_findings(analysis))
        review.remember_card(card, analysis_id=analysis.analysis_id, kind=outcome.kind, verified=outcome.verified,
                             service_id=service.id, fhir_server=req.fhir_server, context=req.context)
        out.append(Answer(outcome.kind, card, analysis.analysis_id))
    return out


def _body() -> Any:
    return request.get_json(force=True, silent=True)


@bp.get("/cds-services")
def services():
    """Discovery: the three services."""
    return jsonify(discovery())


def _log_unexpected(message: str, hook_instance: str, e: BaseException) -> None:
    """Log an unexpected failure with the hookInstance, its type and traceback, not its message."""
    log.error("hookInstance=%s %s: %s (message withheld: it may quote request data)\n%s",
              hook_instance_tag(hook_instance), message, type(e).__name__, frames(e))


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str):
    """One hook call; answers by the deadline with cards, a pending card or ``{"cards": []}``.

    400/401/404/412 come from checking the request; after that, nothing answers 500.
    """
    state = current_app.extensions["cxr_cds"]
    started = g.get("arrived", time.monotonic())     # the request's arrival (cds_hooks.app)
    service = get_service(service_id)
    state.authenticate()
    req = parse_request(service, _body())
    try:
        return _answer_hook(req, service, state, started)
    except CdsHooksError:
        raise                                   # 412 (Patient unobtainable): an answer the spec defines
    except Exception as e:                      # a bug or a failing store: still a card, never a 500
        _log_unexpected("hook answer failed", req.hook_instance, e)
        card = cards.notice_card(_card_settings(state), f"No AI draft: the service failed ({type(e).__name__})",
                                 "The AI service could not complete this request; the order is unaffected. "
                                 "The service has logged the failure for its operators.")
        return jsonify({"cards": [card]})


def _answer_hook(req: HookRequest, service: Service, state: Any, started: float):
    deadline = started + state.settings.deadline_s
    outcome_label = "cards"
    future = state.analyzer.hook_pool.submit(evaluate, req, service, state)
    try:
        # the budget counts from the request's arrival: authentication and parsing are already spent
        answers = _answers(future.result(timeout=max(0.0, deadline - time.monotonic())), req, service, state,
                           deadline)
    except FutureTimeout:
        outcome_label = "deadline"
        log.info("hookInstance=%s deadline of %.1f s reached before the study was found",
                 hook_instance_tag(req.hook_instance), state.settings.deadline_s)
        answers = ([Answer("pending", cards.pending_card(_card_settings(state), hook=req.hook))]
                   if state.settings.pending_card else [])
    except CdsHooksError:
        state.metrics.hook_latency.labels(req.hook).observe(time.monotonic() - started)
        raise
    except Exception as e:                      # any other failure: an explanatory card, logged
        outcome_label = "error"
        _log_unexpected("hook evaluation failed", req.hook_instance, e)
        answers = [Answer("notice", _notice(_card_settings(state), e, req.hook_instance))]
    for answer in answers:
        state.metrics.cards.labels(answer.kind, answer.card["indicator"]).inc()
    elapsed = time.monotonic() - started
    state.metrics.hook_latency.labels(req.hook).observe(elapsed)
    state.runtime.store.audit(hook_instance=req.hook_instance, service_id=service.id, outcome=outcome_label,
                              analysis_ids=[a.analysis_id for a in answers if a.analysis_id],
                              elapsed_ms=elapsed * 1000)
    return jsonify({"cards": [a.card for a in answers]})


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str):
    """Store accepted/overridden outcomes (idempotent); unknown card uuids are accepted and logged."""
    state = current_app.extensions["cxr_cds"]
    service = get_service(service_id)
    state.authenticate()
    items = parse_feedback(_body())
    stored = 0
    for item in items:
        card = state.runtime.store.card(item["card"])
        if card is None:
            log.info("feedback for unknown card %s on %s", one_line(item["card"], 80), service.id)
        if state.runtime.store.put_feedback(service.id, item):
            stored += 1
            for finding in (card or {}).get("findings") or ["none"]:
                state.metrics.feedback.labels(item["outcome"], finding).inc()
    return jsonify({"received": len(items), "stored": stored})
