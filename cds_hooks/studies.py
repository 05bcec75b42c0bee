"""The study-arrival clock and the draft link target (one blueprint).

``POST /studies/{StudyInstanceUID}/analyze`` is what a PACS calls when a study is stable (e.g. an
Orthanc ``OnStableStudy`` script): it plans from metadata and queues the analysis, answering at
once. It authenticates with the PACS shared secret ``CXR_CDS_PACS_TOKEN`` when that is set (a fixed
token a script can send every time), else with a hook's JWT. There is no patient on this path:
the analysis is stored without any patient reference, and the hook that later attaches it to a
Patient first checks the study's PatientID against that Patient's MRNs. ``GET /drafts/{analysis_id}``
returns the stored draft JSON to a holder of its review-link token, the PACS secret or a hook JWT
(401 otherwise).
"""
from __future__ import annotations

import re

from flask import Blueprint, current_app, jsonify, request

from cds_hooks.errors import CdsHooksError, Unauthorized, UnknownService
from cds_hooks.store import QueueFull
from cds_hooks.review import draft_token_ok
from cds_hooks.security import check_shared_secret
from imaging import ImagingError

bp = Blueprint("studies", __name__)


class StudyProblem(CdsHooksError):
    """An imaging error surfaced on the study-arrival endpoint, with its own status."""

    def __init__(self, error: ImagingError):
        super().__init__(f"{error.code}: {error}")
        self.status = error.http_status
        self.issue_code = "not-found" if error.http_status == 404 else "processing"


def _authenticate_reader(state) -> None:
    """The PACS shared secret (when set) or a verified hook JWT; anything else is 401, also with auth off."""
    header = request.headers.get("Authorization")
    if state.settings.pacs_token is not None:
        try:
            check_shared_secret(header, state.settings.pacs_token)
            return
        except Unauthorized:
            if state.verifier is None:
                raise
    if state.verifier is None:
        raise Unauthorized(f"{request.path}: no credential (review-link token, PACS secret or hook JWT)")
    state.authenticate()


@bp.post("/studies/<study_instance_uid>/analyze")
def analyze(study_instance_uid: str):
    """Queue the context-free analysis of one study; 202 while it runs, 200 when stored."""
    state = current_app.extensions["cxr_cds"]
    state.authenticate_pacs()
    _check_uid(study_instance_uid)
    try:
        obtained = state.analyzer.analyze_study(study_instance_uid)
    except ImagingError as e:
        raise StudyProblem(e) from None
    except QueueFull as e:
        raise Busy(f"{e.message}: the analysis of study {study_instance_uid} was not queued; call again "
                   f"after {RETRY_AFTER_S} s") from None
    if obtained.stored:
        analysis_id = obtained.analysis.analysis_id
        return jsonify({"status": "stored", "analysis_id": analysis_id,
                        "draft": f"{state.base_url()}/drafts/{analysis_id}"}), 200
    # Location: where the caller can ask how the work stands (GET /studies/{uid})
    return (jsonify({"status": "queued", "study_instance_uid": study_instance_uid}), 202,
            {"Location": f"{state.base_url()}/studies/{study_instance_uid}"})


@bp.get("/studies/<study_instance_uid>")
def study_status(study_instance_uid: str):
    """Where a study's work stands: queued, running, done (with the analysis id) or failed (with the reason).

    The same credential as ``POST /studies/{uid}/analyze``; 404 when nothing was asked for that study.
    """
    state = current_app.extensions["cxr_cds"]
    state.authenticate_pacs()
    _check_uid(study_instance_uid)
    status = state.analyzer.study_status(study_instance_uid)
    if status is None:
        raise UnknownService(f"no analysis was queued or stored for study {study_instance_uid}; "
                             f"POST /studies/{study_instance_uid}/analyze queues one")
    if status.get("analysis_id"):
        status["draft"] = f"{state.base_url()}/drafts/{status['analysis_id']}"
    return jsonify(status)


RETRY_AFTER_S = 30
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _check_uid(uid: str) -> None:
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise BadUid(f"{uid[:80]!r} is not a DICOM UID (digits and dots, at most 64 characters)")


class BadUid(CdsHooksError):
    status = 400
    code = "bad-uid"
    issue_code = "invalid"


class Busy(CdsHooksError):
    """Too many analyses wait: 503 with ``Retry-After``."""

    status = 503
    code = "busy"
    issue_code = "transient"
    retry_after_s = RETRY_AFTER_S


@bp.get("/drafts/<analysis_id>")
def draft(analysis_id: str):
    """The stored draft (report, findings, FHIR Bundle, study, model); 401 without a credential, 404 if unknown.

    It holds the accession number, UIDs and the report text, so it needs one of: the card's signed
    review-link token for this draft (``?token=``), the PACS shared secret, or a hook JWT
    (``Authorization: Bearer``).
    """
    state = current_app.extensions["cxr_cds"]
    if not draft_token_ok(analysis_id, request.args.get("token")):
        _authenticate_reader(state)
    body = state.runtime.store.get_by_id(analysis_id)
    if body is None:
        raise UnknownService(f"no stored AI draft {analysis_id!r}; drafts are kept by analysis id")
    return jsonify(body)
