"""The clinician's review page: one signed, expiring link per card, bound to one analysis (one blueprint).

``GET /review/{analysis_id}?token=...`` shows the radiograph that was read (the stored rendition,
with zoom and window/level), the draft report with each finding's evidence highlighted, each
finding's presence, laterality, severity and model probability, the study, model and prompt
versions and the AI-draft notice. ``POST`` (the same token in the form body: no cookies, so no
cross-site request can forge it) records agree/disagree per finding, a corrected text, and an
accept or reject decision with a reason. Decisions also go to the CDS feedback table and metrics
(``accepted``/``overridden`` for the card, per finding); with ``CXR_CDS_WRITE_BACK=fhir`` an
accepted draft of a verified ordered study is POSTed, still ``preliminary`` and AI-labelled, with
the clinician's edits and the clinician in its Provenance, to the FHIR server the hook named
(only if it is on ``CXR_CDS_FHIR_ALLOWLIST``).

Links are ``itsdangerous`` timed signatures (HMAC-SHA1 over a key derived from
``CXR_CDS_LINK_SECRET``) of ``{analysis id, card uuid}``: unguessable, tamper-evident, expiring
after ``CXR_CDS_LINK_TTL_S``. Without a configured secret each process draws a random one, so links
stop working on restart and are not shared across workers or hosts: a fleet must set the secret.
Expired links answer 410 and tampered or foreign ones 403, each with a page that says what to do.
"""
from __future__ import annotations

import base64
import copy
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import requests
from flask import Blueprint, Flask, Response, current_app, render_template, request, url_for
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from cds_hooks import cards
from cds_hooks.context import fhir_server_allowed
from cds_hooks.errors import CdsHooksError
from cds_hooks.review_store import Decision, LinkContext, ReviewStore
from cds_hooks.settings import Settings, env_name

log = logging.getLogger(__name__)

bp = Blueprint("review", __name__, template_folder="templates", static_folder="static",
               static_url_path="/review-static")

_SALT = "cxr-cds.review-link.v1"
_PRESENCE_TEXT = {"present": "present", "absent": "absent", "uncertain": "uncertain",
                  "not_mentioned": "not mentioned"}
#: reasons a clinician may give on the review page: the card's override reasons, and "other"
REASONS: tuple[tuple[str, str], ...] = cards.OVERRIDE_REASONS + (("other", "Other reason"),)
_SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
                                "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",          # the token is in the URL: never send it on to another site
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


class LinkRefused(CdsHooksError):
    """A review link that is missing, tampered with, or for another analysis (403)."""

    status = 403
    code = "link-invalid"
    issue_code = "security"


class LinkExpired(LinkRefused):
    """A review link past its lifetime (410)."""

    status = 410
    code = "link-expired"


class ReviewLinks:
    """Signs and checks review links.

    Parameters
    ----------
    secret : str
        The HMAC key (``CXR_CDS_LINK_SECRET``).
    ttl_s : int
        Lifetime of a link in seconds (``CXR_CDS_LINK_TTL_S``).
    """

    def __init__(self, secret: str, ttl_s: int):
        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT)
        self.ttl_s = ttl_s

    def token(self, analysis_id: str, card_uuid: str, prior_analysis_id: str | None = None) -> str:
        """A signed, timestamped token naming one analysis, the card that links to it and the compared prior's."""
        claims = {"a": analysis_id, "c": card_uuid}
        if prior_analysis_id:
            claims["p"] = prior_analysis_id
        return self._serializer.dumps(claims)

    def url(self, base_url: str, analysis_id: str, card_uuid: str, prior_analysis_id: str | None = None) -> str:
        """The absolute review-page URL for a card."""
        return f"{base_url}/review/{analysis_id}?token={self.token(analysis_id, card_uuid, prior_analysis_id)}"

    def prior(self, analysis_id: str, token: str | None) -> str | None:
        """The compared prior's analysis id a valid token names, if any (raises like :meth:`check`)."""
        self.check(analysis_id, token)
        claims = self._serializer.loads(token, max_age=self.ttl_s)
        prior = claims.get("p")
        return prior if isinstance(prior, str) and prior else None

    def check(self, analysis_id: str, token: str | None) -> str:
        """The card uuid a valid token for ``analysis_id`` carries.

        Raises
        ------
        LinkExpired
            Signed by us but older than ``ttl_s``.
        LinkRefused
            No token, a bad signature, or a token for another analysis.
        """
        if not token:
            raise LinkRefused("this address carries no review token; open the review link from the CDS card")
        try:
            claims = self._serializer.loads(token, max_age=self.ttl_s)
        except SignatureExpired:
            hours = self.ttl_s / 3600
            raise LinkExpired(f"this review link has expired (links are valid for {hours:g} h); open the "
                              "chart or the order again in the EHR for a new card and link") from None
        except BadSignature:
            raise LinkRefused("this review link is not valid (altered, truncated, or signed by another "
                              "server); open the review link from the CDS card again") from None
        if not isinstance(claims, dict) or claims.get("a") != analysis_id or not isinstance(claims.get("c"), str):
            raise LinkRefused("this review link belongs to another draft; open the review link from its own card")
        return claims["c"]


@dataclass
class Review:
    """``app.extensions["cxr_cds_review"]``: the links and the review store."""

    links: ReviewLinks
    store: ReviewStore
    session: requests.Session


def init_app(app: Flask, settings: Settings, store: Any) -> Review:
    """Register the blueprint and the review state on ``app`` (called by ``create_app``)."""
    secret = settings.link_secret
    if secret is None:
        secret = secrets.token_urlsafe(32)
        log.warning("%s is not set: review links are signed with a random key of this process; they stop "
                    "working when it restarts and are not valid on other workers or hosts (a fleet must set "
                    "one shared secret)", env_name("link_secret"))
    review = Review(ReviewLinks(secret, settings.link_ttl_s), ReviewStore(store, keep_references=settings.write_back != "off"), requests.Session())
    app.extensions["cxr_cds_review"] = review
    app.register_blueprint(bp)
    return review


def link_maker(base_url: str) -> Callable[[str, str], str]:
    """``(analysis_id, card_uuid) -> review URL`` for :class:`cds_hooks.cards.CardSettings` (inside a request)."""
    links = current_app.extensions["cxr_cds_review"].links
    return lambda analysis_id, card_uuid, prior_analysis_id=None: links.url(base_url, analysis_id, card_uuid,
                                                                            prior_analysis_id)


def remember_card(card: Mapping[str, Any], *, analysis_id: str, kind: str, verified: bool, service_id: str,
                  fhir_server: str | None, context: Mapping[str, Any]) -> None:
    """Keep what the hook call knew about a card that links to the review page (for writing back)."""
    if not card.get("links"):
        return
    def ref(value: Any) -> str | None:
        return value if isinstance(value, str) and value else None
    current_app.extensions["cxr_cds_review"].store.put_link(card["uuid"], LinkContext(
        analysis_id=analysis_id, kind=kind, verified=verified, service_id=service_id, fhir_server=fhir_server,
        patient_id=ref(context.get("patientId")), encounter_id=ref(context.get("encounterId")),
        user_id=ref(context.get("userId"))))


def draft_token_ok(analysis_id: str, token: str | None) -> bool:
    """Whether ``token`` is a valid review link token for ``analysis_id`` (for ``GET /drafts/{id}``)."""
    try:
        current_app.extensions["cxr_cds_review"].links.check(analysis_id, token)
    except LinkRefused:
        return False
    return True


# -- the page -------------------------------------------------------------------------------------
def _segments(text: str, findings: Mapping[str, Mapping[str, Any]]) -> tuple[list[dict], dict[str, str]]:
    """The report split into plain and highlighted parts, and each finding's anchor id.

    Spans are character offsets into ``text``; a span that does not fit the text is not highlighted,
    and a span overlapping an earlier one shares that one's highlight.
    """
    spans = []
    for name, f in findings.items():
        span = f.get("span")
        if (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(x, int) for x in span)
                and 0 <= span[0] < span[1] <= len(text)):
            spans.append((span[0], span[1], name))
    spans.sort()
    parts: list[dict] = []
    anchors: dict[str, str] = {}
    cursor = 0
    for start, end, name in spans:
        if start < cursor and parts and parts[-1]["names"]:
            parts[-1]["names"].append(name)
            anchors[name] = parts[-1]["id"]
            continue
        if start > cursor:
            parts.append({"text": text[cursor:start], "names": []})
        anchor = "ev-" + name.replace("_", "-")
        parts.append({"text": text[start:end], "names": [name], "id": anchor,
                      "presence": findings[name].get("presence")})
        anchors[name] = anchor
        cursor = end
    if cursor < len(text):
        parts.append({"text": text[cursor:], "names": []})
    return parts, anchors


def _rows(body: Mapping[str, Any], verdicts: Mapping[str, str], anchors: Mapping[str, str]) -> list[dict]:
    """One row per primary finding (a finding not named is shown as "not mentioned", never as absent), and
    per other finding the report mentions or the model scored; named ones first."""
    from prompts.findings import PRIMARY_FINDINGS

    findings, scores = body.get("findings") or {}, body.get("scores") or {}
    order = {"present": 0, "uncertain": 1, "absent": 2, "not_mentioned": 3}
    rows = []
    for name, f in findings.items():
        presence = f.get("presence", "not_mentioned")
        if presence == "not_mentioned" and scores.get(name) is None and name not in PRIMARY_FINDINGS:
            continue
        rows.append({
            "name": name, "label": cards._label(name).capitalize(), "presence": presence,
            "presence_text": _PRESENCE_TEXT.get(presence, presence),
            "laterality": f.get("laterality"), "severity": f.get("severity"),
            "probability": None if scores.get(name) is None else f"{float(scores[name]):.2f}",
            "evidence": cards.short_phrase(f["evidence"]) if f.get("evidence") else None,
            "anchor": anchors.get(name), "verdict": verdicts.get(name),
        })
    return sorted(rows, key=lambda r: order.get(r["presence"], 4))


def _page(analysis_id: str, token: str, body: Mapping[str, Any], *, status: int = 200,
          message: str | None = None, errors: list[str] | None = None, report_text: str | None = None) -> Response:
    review: Review = current_app.extensions["cxr_cds_review"]
    settings: Settings = current_app.extensions["cxr_cds"].settings
    card_uuid = review.links.check(analysis_id, token)
    text = body.get("report") or ""
    segments, anchors = _segments(text, body.get("findings") or {})   # offsets into the stored text
    for part in segments:
        part["text"] = cards.strip_controls(part["text"])
    context = review.store.link(card_uuid)
    html = render_template(
        "review.html", prior=_prior_panel(analysis_id, token, body), analysis_id=analysis_id, token=token,
        study=body.get("study") or {},
        model=body.get("model") or {}, created=body.get("created"), segments=segments,
        rows=_rows(body, review.store.verdicts(analysis_id), anchors),
        report_text=cards.strip_controls(report_text if report_text is not None else text),
        truncated=cards.truncated(body.get("model") or {}),
        has_image=review.store.rendition(analysis_id) is not None,
        image_url=url_for("review.image", analysis_id=analysis_id, token=token),
        post_url=url_for("review.submit", analysis_id=analysis_id),
        json_url=url_for("studies.draft", analysis_id=analysis_id, token=token),
        reasons=REASONS, decision=review.store.decision(analysis_id), message=message, errors=errors or [],
        write_back=_write_back_note(settings, context), ttl_h=review.links.ttl_s / 3600)
    return Response(html, status=status, mimetype="text/html", headers=_SECURITY_HEADERS)


def _prior_panel(analysis_id: str, token: str, body: Mapping[str, Any]) -> dict | None:
    """The compared prior study for the page (its draft named in the signed link): image and changes."""
    from datetime import date

    from prompts import Findings, compare_findings

    review: Review = current_app.extensions["cxr_cds_review"]
    prior_id = review.links.prior(analysis_id, token)
    if prior_id is None:
        return None
    prior = current_app.extensions["cxr_cds"].runtime.store.get_by_id(prior_id)
    if prior is None:
        return {"missing": True}
    study = prior.get("study") or {}
    when = study.get("study_date")
    comparison = compare_findings(Findings.from_json(body.get("findings") or {}),
                                  Findings.from_json(prior.get("findings") or {}),
                                  prior_date=date.fromisoformat(when) if when else None)
    changes = [{"name": item.name, "label": cards._label(item.name).capitalize(), "change": item.change,
                "change_text": cards._CHANGE_WORDS[item.change], "reason": item.reason,
                "now": cards.short_phrase(item.current_evidence) if item.current_evidence else None,
                "before": cards.short_phrase(item.prior_evidence) if item.prior_evidence else None}
               for item in comparison.ordered()
               if not (item.change == "unchanged" and item.current.presence != "present")]
    return {"missing": False, "study": study, "analysis_id": prior_id, "changes": changes,
            "has_image": review.store.rendition(prior_id) is not None,
            "image_url": url_for("review.prior_image", analysis_id=analysis_id, token=token)}


def _write_back_note(settings: Settings, context: LinkContext | None) -> str:
    if settings.write_back != "fhir":
        return "Accepting records your decision; this site does not write AI drafts to the EHR."
    if not _eligible(settings, context):
        return ("Accepting records your decision. This draft is not written to the EHR: it is not a verified "
                "draft of the ordered study, or the EHR's FHIR server is not on this service's allowlist.")
    return ("Accepting writes this preliminary AI draft, with your corrections and your name in its "
            "provenance, to the EHR's FHIR server for the chart.")


def _eligible(settings: Settings, context: LinkContext | None) -> bool:
    return bool(context and context.kind == "draft" and context.verified and context.fhir_server
                and context.patient_id and fhir_server_allowed(context.fhir_server, settings.fhir_allowlist))


def _refused(e: LinkRefused) -> Response:
    current_app.extensions["cxr_cds"].metrics.review_links.labels(e.code).inc()
    log.info("review link refused: %s", e.code)
    html = render_template("refused.html", status=e.status, expired=isinstance(e, LinkExpired), message=e.message)
    return Response(html, status=e.status, mimetype="text/html", headers=_SECURITY_HEADERS)


def _missing(analysis_id: str) -> Response:
    html = render_template("refused.html", status=404, expired=False,
                           message="No stored AI draft has this id; it may have been removed. Open the "
                                   "chart or the order again in the EHR for a new card.")
    return Response(html, status=404, mimetype="text/html", headers=_SECURITY_HEADERS)


@bp.get("/review/<analysis_id>")
def page(analysis_id: str):
    """The review page of one analysis (a valid link token in ``?token=``)."""
    token = request.args.get("token")
    try:
        current_app.extensions["cxr_cds_review"].links.check(analysis_id, token)
    except LinkRefused as e:
        return _refused(e)
    body = current_app.extensions["cxr_cds"].runtime.store.get_by_id(analysis_id)
    if body is None:
        return _missing(analysis_id)
    return _page(analysis_id, token, body)


@bp.get("/review/<analysis_id>/image.png")
def image(analysis_id: str):
    """The rendition the analysis read (signed like the page); 404 when none was stored."""
    review: Review = current_app.extensions["cxr_cds_review"]
    try:
        review.links.check(analysis_id, request.args.get("token"))
    except LinkRefused as e:
        return _refused(e)
    return _rendition(review, analysis_id, analysis_id)


def _rendition(review: Review, analysis_id: str, rendition_of: str | None) -> Response:
    """The stored rendition of ``rendition_of`` (this draft's image or its prior's); 404 when none."""
    stored = review.store.rendition(rendition_of) if rendition_of else None
    if stored is None:
        return _missing(analysis_id)
    data, media_type = stored
    return Response(data, mimetype=media_type, headers=_SECURITY_HEADERS)


@bp.get("/review/<analysis_id>/prior.png")
def prior_image(analysis_id: str):
    """The rendition of the compared prior study's draft that the signed link names; 404 when none."""
    review: Review = current_app.extensions["cxr_cds_review"]
    try:
        prior_id = review.links.prior(analysis_id, request.args.get("token"))
    except LinkRefused as e:
        return _refused(e)
    return _rendition(review, analysis_id, prior_id)


@bp.post("/review/<analysis_id>")
def submit(analysis_id: str):
    """Record verdicts per finding and, with ``decision`` accept or reject, the decision (form POST)."""
    state = current_app.extensions["cxr_cds"]
    review: Review = current_app.extensions["cxr_cds_review"]
    token = request.form.get("token")            # from the form body only: a forged cross-site form has none
    try:
        card_uuid = review.links.check(analysis_id, token)
    except LinkRefused as e:
        return _refused(e)
    body = state.runtime.store.get_by_id(analysis_id)
    if body is None:
        return _missing(analysis_id)
    findings = body.get("findings") or {}
    errors: list[str] = []
    verdicts: dict[str, str] = {}
    for key, value in request.form.items():
        if not key.startswith("verdict."):
            continue
        name = key.removeprefix("verdict.")
        if name not in findings or value not in ("agree", "disagree", ""):
            errors.append(f"unknown finding or verdict: {key[:60]!r}={value[:20]!r}")
        elif value:
            verdicts[name] = value
    decision = request.form.get("decision", "save")
    reason = request.form.get("reason") or None
    if decision not in ("save", "accept", "reject"):
        errors.append(f"unknown decision {decision[:20]!r}: use save, accept or reject")
    if reason is not None and reason not in dict(REASONS):
        errors.append(f"unknown reason {reason[:40]!r}")
    if decision == "reject" and reason is None:
        errors.append("Choose a reason to reject the draft.")
    original = body.get("report") or ""
    corrected = (request.form.get("report_text") or "").replace("\r\n", "\n")
    if errors:
        return _page(analysis_id, token, body, status=422, errors=errors, report_text=corrected or original)

    stored_card = state.runtime.store.card(card_uuid) or {}
    if verdicts:
        review.store.put_verdicts(card_uuid, analysis_id, verdicts)
        for name, verdict in verdicts.items():
            state.metrics.review_verdicts.labels(verdict, name, findings[name].get("presence", "not_mentioned")).inc()
    message = f"Saved your review of {len(verdicts)} finding(s)." if verdicts else "Nothing to save."
    if decision in ("accept", "reject"):
        edited = decision == "accept" and bool(corrected.strip()) and cards.clean_text(corrected) != cards.clean_text(original)
        outcome = "off"
        settings: Settings = state.settings
        context = review.store.link(card_uuid)
        if decision == "accept" and settings.write_back == "fhir":
            outcome = _write_back(review, settings, context, body, corrected if edited else None,
                                  review.store.verdicts(analysis_id))
        _cds_feedback(state, card_uuid, stored_card, decision, reason)
        review.store.put_decision(Decision(
            card_uuid=card_uuid, analysis_id=analysis_id, decision=decision, reason_code=reason,
            has_comment=False, edited=edited, report_text=corrected if decision == "accept" and edited else None,
            write_back=outcome if decision == "accept" else "off"))
        state.metrics.review_decisions.labels(decision, reason or "none").inc()
        if decision == "accept":
            state.metrics.write_back.labels(outcome).inc()
        message = _decision_message(decision, outcome, len(verdicts))
    return _page(analysis_id, token, body, message=message)


def _decision_message(decision: str, outcome: str, n_verdicts: int) -> str:
    if decision == "reject":
        return f"Recorded: you rejected the draft ({n_verdicts} finding review(s) saved)."
    return {"written": "Recorded: you accepted the draft; the preliminary report was written to the EHR.",
            "failed": ("Recorded: you accepted the draft, but writing it to the EHR failed; it is not in the "
                       "chart. The service has logged the failure."),
            "not-eligible": "Recorded: you accepted the draft (it is not written to the EHR: see the note below).",
            }.get(outcome, "Recorded: you accepted the draft.")


def _cds_feedback(state: Any, card_uuid: str, stored_card: Mapping[str, Any], decision: str,
                  reason: str | None) -> None:
    """The decision as CDS Hooks feedback on the card: the same table and per-finding metric."""
    item: dict[str, Any] = {"card": card_uuid, "outcome": "accepted" if decision == "accept" else "overridden",
                            "outcomeTimestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    if decision == "accept":
        item["acceptedSuggestions"] = [{"id": "review-page"}]
    elif reason:
        item["overrideReason"] = {"reason": {"system": cards.OVERRIDE_SYSTEM, "code": reason,
                                             "display": dict(REASONS)[reason]}}
    service_id = stored_card.get("service_id") or "review-page"
    if state.runtime.store.put_feedback(service_id, item):
        for finding in stored_card.get("findings") or ["none"]:
            state.metrics.feedback.labels(item["outcome"], finding).inc()


# -- write-back -----------------------------------------------------------------------------------
def reviewed_bundle(body: Mapping[str, Any], context: LinkContext, *, corrected_text: str | None,
                    verdicts: Mapping[str, str], now: datetime) -> dict:
    """The accepted draft as a FHIR R4 ``transaction`` Bundle: DiagnosticReport, Device, Provenance.

    Pure. The DiagnosticReport stays ``preliminary`` with its AI security label and disclaimer; it gets
    the hook's ``subject``/``encounter``, the corrected text (as its ``presentedForm``, still headed
    by the disclaimer) when the clinician edited it, and a note on each Observation the clinician
    disagreed with. The Provenance keeps the AI device as author and adds the clinician (``context.user_id``).

    Parameters
    ----------
    body : Mapping
        The stored analysis (``Analysis.to_json()``).
    context : LinkContext
        What the hook call knew (patient, encounter, user).
    corrected_text : str, optional
        The clinician's corrected report text; None when unchanged.
    verdicts : Mapping[str, str]
        Finding name -> ``agree`` / ``disagree``.
    now : datetime
        When the clinician accepted.

    Returns
    -------
    dict
    """
    from fhir_mapping import for_patient

    report = for_patient(body["diagnostic_report"], patient_reference=f"Patient/{context.patient_id}",
                         encounter_reference=f"Encounter/{context.encounter_id}" if context.encounter_id else None)
    report = copy.deepcopy(report)
    entries = {e["resource"]["resourceType"]: e for e in body["fhir"]["entry"]}
    report_url = f"urn:uuid:{uuid.uuid4()}"
    device_url = f"urn:uuid:{uuid.uuid4()}"
    who = context.user_id or "the reviewing clinician"
    disagreed = sorted(n for n, v in verdicts.items() if v == "disagree")
    for obs in report.get("contained", ()):
        name = obs.get("id", "").removeprefix("obs-").replace("-", "_")
        if obs.get("resourceType") == "Observation" and name in disagreed:
            note: dict[str, Any] = {"text": "The reviewing clinician disagreed with this AI finding."}
            if context.user_id:
                note["authorReference"] = {"reference": context.user_id}
            obs["note"] = [note]
    review_lines = ["Reviewed by a clinician; still a preliminary AI draft, not a final report."]
    if disagreed:
        review_lines.append("Clinician disagreed with: " + ", ".join(cards._label(n) for n in disagreed) + ".")
    if corrected_text is not None:
        review_lines.append("The report text was corrected by the clinician.")
        text = (f"{cards.DISCLAIMER.replace('**', '')}\nCorrected on review by {who}.\n\n{corrected_text.strip()}\n")
        report["presentedForm"] = [{"contentType": "text/plain; charset=utf-8", "language": "en",
                                    "data": base64.b64encode(text.encode()).decode(),
                                    "title": "AI draft chest radiograph report, corrected on clinician review"}]
    report["conclusion"] = (report.get("conclusion", "").rstrip() + "\n" + " ".join(review_lines)).strip()
    provenance = copy.deepcopy(entries["Provenance"]["resource"])
    provenance["target"] = [{"reference": report_url}]
    provenance["recorded"] = now.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    ai_device = entries["Provenance"]["resource"]["agent"][0]["who"]["reference"]
    for agent in provenance["agent"]:
        if agent.get("who", {}).get("reference") == ai_device:
            agent["who"] = {"reference": device_url}
    if context.user_id:
        code = "author" if corrected_text is not None else "verifier"
        provenance["agent"].append({
            "type": {"coding": [{"system": PROVENANCE_PARTICIPANT, "code": code,
                                 "display": code.capitalize()}],
                     "text": "clinician review of an AI draft (the report stays preliminary)"},
            "who": {"reference": context.user_id}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": report_url, "resource": report, "request": {"method": "POST", "url": "DiagnosticReport"}},
        {"fullUrl": device_url, "resource": copy.deepcopy(entries["Device"]["resource"]),
         "request": {"method": "POST", "url": "Device"}},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": provenance,
         "request": {"method": "POST", "url": "Provenance"}},
    ]}


def _write_back(review: Review, settings: Settings, context: LinkContext | None, body: Mapping[str, Any],
                corrected_text: str | None, verdicts: Mapping[str, str]) -> str:
    """POST the accepted draft to the hook's FHIR server; ``written``, ``failed`` or ``not-eligible``."""
    if not _eligible(settings, context):
        return "not-eligible"
    from fhir_mapping import FhirMappingError, validate_r4

    bundle = reviewed_bundle(body, context, corrected_text=corrected_text, verdicts=verdicts,
                             now=datetime.now(timezone.utc))
    try:
        for entry in bundle["entry"]:
            validate_r4(entry["resource"])
        response = review.session.post(context.fhir_server, json=bundle, timeout=settings.fhir_timeout_s,
                                       allow_redirects=False,
                                       headers={"Content-Type": "application/fhir+json",
                                                "Accept": "application/fhir+json"})
    except (requests.RequestException, FhirMappingError) as e:
        log.warning("write-back of analysis %s failed: %s", body.get("analysis_id"), type(e).__name__)
        return "failed"
    if not 200 <= response.status_code < 300:
        log.warning("write-back of analysis %s refused by the FHIR server: HTTP %s", body.get("analysis_id"),
                    response.status_code)
        return "failed"
    log.info("analysis %s accepted on review and written to the EHR's FHIR server", body.get("analysis_id"))
    return "written"
