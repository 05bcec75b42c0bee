"""The study-arrival clock and the draft link target (one blueprint).

``POST /studies/{StudyInstanceUID}/analyze`` is what a PACS calls when a study is stable (e.g. an
Orthanc ``OnStableStudy`` script): it plans from metadata and queues the analysis, answering at
once. It authenticates with the PACS shared secret ``CXR_CDS_PACS_TOKEN`` when that is set (a fixed
token a script can send every time), else with a hook's JWT. There is no patient on this path:
the analysis is stored without any patient reference, and the hook that later attaches it to a
Patient first checks the study's PatientID against that Patient's MRNs. ``GET /drafts/{analysis_id}`` returns the stored draft JSON that cards link to.
"""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from cds_hooks.errors import CdsHooksError, UnknownService
from imaging import ImagingError

bp = Blueprint("studies", __name__)


class StudyProblem(CdsHooksError):
    """An imaging error surfaced on the study-arrival endpoint, with its own status."""

    def __init__(self, error: ImagingError):
        super().__init__(f"{error.code}: {error}")
        self.status = error.http_status
        self.issue_code = "not-found" if error.http_status == 404 else "processing"


@bp.post("/studies/<study_instance_uid>/analyze")
def analyze(study_instance_uid: str):
    """Queue the context-free analysis of one study; 202 while it runs, 200 when stored."""
    state = current_app.extensions["cxr_cds"]
    state.authenticate_pacs()
    try:
        obtained = state.analyzer.analyze_study(study_instance_uid)
    except ImagingError as e:
        raise StudyProblem(e) from None
    if obtained.stored:
        analysis_id = obtained.analysis.analysis_id
        return jsonify({"status": "stored", "analysis_id": analysis_id,
                        "draft": f"{state.base_url()}/drafts/{analysis_id}"}), 200
    return jsonify({"status": "queued", "study_instance_uid": study_instance_uid}), 202


@bp.get("/drafts/<analysis_id>")
def draft(analysis_id: str):
    """The stored draft (report, findings, FHIR Bundle, study, model); 404 if unknown."""
    body = current_app.extensions["cxr_cds"].runtime.store.get_by_id(analysis_id)
    if body is None:
        raise UnknownService(f"no stored AI draft {analysis_id!r}; drafts are kept by analysis id")
    return jsonify(body)
