"""The CDS Hooks surface: discovery, the three services, and feedback (one blueprint).

A hook call reads top to bottom: parse and check the request -> pick the chest X-ray orders ->
gather Patient/Conditions/Encounter (prefetch, else allowlisted fhirServer; 412 if the Patient
can't be had) -> find the ordered study by AccessionNumber (QIDO-RS), else the most recent prior
by PatientID -> a stored analysis or the running one -> cards. Everything after parsing runs in a
worker thread so the hook answers at its deadline whatever the PACS or the model are doing; late
work goes on in the background and the next call gets the stored result.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

from flask import Blueprint, current_app, jsonify, request

from cds_hooks import cards
from cds_hooks.context import HookData, gather
from cds_hooks.errors import CdsHooksError
from cds_hooks.feedback import parse_feedback
from cds_hooks.jobs import Obtained
from cds_hooks.pipeline import Plan
from cds_hooks.services import (HookRequest, Service, candidate_orders, discovery, get_service,
                                is_chest_xray, parse_request)
from fhir_mapping import patient_mrns, read_context, read_order
from imaging import ImagingError, StudyNotFound

log = logging.getLogger(__name__)

bp = Blueprint("cds_hooks", __name__)


@dataclass(frozen=True)
class Outcome:
    """What one hook call found for one study: its analysis (stored or running) or why not."""

    kind: Literal["draft", "prior", "latest"]
    plan: Plan | None = None
    obtained: Obtained | None = None
    error: Exception | None = None


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
    for order in orders:
        info = read_order(order)
        if not info.accession_number:
            need_prior = True
            continue
        context = read_context(patient=data.patient, service_request=order, conditions=conditions,
                               encounter=data.encounter)
        try:
            plan = analyzer.plan(accession_number=info.accession_number)
        except StudyNotFound:
            need_prior = True               # ordered study not acquired yet
            continue
        except ImagingError as e:
            outcomes.append(Outcome(kind="draft", error=e))
            continue
        outcomes.append(Outcome(kind="draft", plan=plan, obtained=analyzer.obtain(plan, context)))

    if need_prior and not any(o.kind == "draft" and o.plan for o in outcomes):
        outcomes.extend(_prior(data, state, kind="latest" if req.hook == "patient-view" else "prior"))
    return outcomes


def _prior(data: HookData, state: Any, *, kind: Literal["prior", "latest"]) -> list[Outcome]:
    """The most recent CR/DX study found by the patient's MRNs (DICOM PatientID), if any."""
    context = read_context(patient=data.patient, conditions=list(data.conditions), encounter=data.encounter)
    for mrn in patient_mrns(data.patient):
        try:
            plan = state.analyzer.plan(patient_id=mrn)
        except StudyNotFound:
            continue
        except ImagingError as e:
            return [Outcome(kind=kind, error=e)]
        return [Outcome(kind=kind, plan=plan, obtained=state.analyzer.obtain(plan, context))]
    return []


def _card_settings(state: Any) -> cards.CardSettings:
    base = state.base_url()
    return cards.CardSettings(base_url=base, source_label=state.settings.source_label,
                              source_url=state.settings.source_url or f"{base}/cds-services",
                              critical_findings=state.settings.critical_findings)


def _notice(cfg: cards.CardSettings, error: BaseException, hook_instance: str) -> dict:
    code = getattr(error, "code", type(error).__name__)
    log.warning("hookInstance=%s no AI draft: %s: %s", hook_instance, code, error)
    if isinstance(error, ImagingError):
        return cards.notice_card(cfg, f"No AI draft: imaging problem ({code})",
                                 f"The chest radiograph could not be analysed: {cards.markdown_text(str(error))}")
    return cards.notice_card(cfg, f"No AI draft: the analysis failed ({code})",
                             "The AI analysis could not be completed; the order is unaffected. "
                             "The service has logged the failure for its operators.")


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
        analysis = outcome.obtained.analysis
        if analysis is None:
            try:
                analysis = outcome.obtained.future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                if state.settings.pending_card:
                    out.append(Answer("pending", cards.pending_card(cfg, study={
                        "study_instance_uid": outcome.plan.study.study_instance_uid,
                        "study_date": outcome.plan.study.study_date})))
                continue
            except Exception as e:             # the pipeline failed: explain, never a 500
                out.append(Answer("notice", _notice(cfg, e, req.hook_instance)))
                continue
        if outcome.kind == "draft":
            card = cards.draft_card(analysis, cfg, patient_id=req.patient_id, encounter_id=req.encounter_id)
        else:
            card = cards.prior_card(analysis, cfg, latest=outcome.kind == "latest")
        state.runtime.store.put_card(card["uuid"], service_id=service.id, analysis_id=analysis.analysis_id,
                                     kind=outcome.kind, findings=cards.present_findings(analysis))
        out.append(Answer(outcome.kind, card, analysis.analysis_id))
    return out


def _body() -> Any:
    return request.get_json(force=True, silent=True)


@bp.get("/cds-services")
def services():
    """Discovery: the three services."""
    return jsonify(discovery())


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str):
    """One hook call; answers by the deadline with cards, a pending card or ``{"cards": []}``."""
    state = current_app.extensions["cxr_cds"]
    started = time.monotonic()
    deadline = started + state.settings.deadline_s
    service = get_service(service_id)
    state.authenticate()
    req = parse_request(service, _body())
    outcome_label = "cards"
    future = state.analyzer.hook_pool.submit(evaluate, req, service, state)
    try:
        answers = _answers(future.result(timeout=state.settings.deadline_s), req, service, state, deadline)
    except FutureTimeout:
        outcome_label = "deadline"
        log.info("hookInstance=%s deadline of %.1f s reached before the study was found",
                 req.hook_instance, state.settings.deadline_s)
        answers = [Answer("pending", cards.pending_card(_card_settings(state)))] if state.settings.pending_card else []
    except CdsHooksError:
        state.metrics.hook_latency.labels(req.hook).observe(time.monotonic() - started)
        raise
    except Exception as e:                      # any other failure: an explanatory card, logged
        outcome_label = "error"
        log.exception("hookInstance=%s hook evaluation failed", req.hook_instance)
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
            log.info("feedback for unknown card %s on %s", item["card"], service.id)
        if state.runtime.store.put_feedback(service.id, item):
            stored += 1
            for finding in (card or {}).get("findings") or ["none"]:
                state.metrics.feedback.labels(item["outcome"], finding).inc()
    return jsonify({"received": len(items), "stored": stored})
