"""A report cut at the token cap is an unfinished text: the draft, the card and the evaluation say so."""
from __future__ import annotations

import numpy as np

from cds_hooks.pipeline import analyze_image
from cds_hooks.settings import Settings
from imaging import RadiographImage
from model_runtime import GenerationResult
from prompts import ClinicalContext

MODEL = {"name": "test-model", "revision": "r1", "dtype": "float32", "quantization": "none",
         "prompt_id": "report_context", "prompt_version": "v1"}
CUT = "No acute cardiopulmonary process. The heart size is normal. There is a small left"


def _image() -> RadiographImage:
    return RadiographImage(pixels=np.zeros((64, 64), np.uint8), study_instance_uid="1.2.3.4",
                           series_instance_uid="1.2.3.4.1", sop_instance_uid="1.2.3.4.1.1",
                           accession_number=None, study_date=None, view_position="PA", laterality=None,
                           pixel_spacing=None, modality="DX", selection_reason=None, bytes_transferred=None,
                           notes=())


def _generate(finish_reason: str):
    def generate(request):
        return GenerationResult(text=CUT, token_ids=(5,) * 512, prompt_token_ids=(1,), timings={},
                                prompt_tokens=10, new_tokens=512, model=dict(MODEL), finish_reason=finish_reason)
    return generate


def _report(analysis) -> dict:
    return analysis.diagnostic_report


def test_a_report_cut_at_the_cap_is_marked_and_draws_no_normal_conclusion(assert_valid_r4):
    analysis = analyze_image(_image(), context=ClinicalContext(), generate=_generate("length"))
    assert analysis.truncated and analysis.model["finish_reason"] == "length"
    report = _report(analysis)
    assert "stopped at the generation length limit" in report["conclusion"]
    assert "No acute cardiopulmonary abnormality" not in report["conclusion"]
    assert not any(c.get("text", "").lower().startswith("no acute") for c in report.get("conclusionCode", []))
    assert_valid_r4(analysis.bundle)


def test_a_finished_report_keeps_its_normal_conclusion():
    analysis = analyze_image(_image(), context=ClinicalContext(), generate=_generate("eos"))
    assert not analysis.truncated
    assert "No acute cardiopulmonary abnormality" in _report(analysis)["conclusion"]
    assert "length limit" not in _report(analysis)["conclusion"]


def test_the_service_uses_the_original_cap_by_default():
    assert Settings().max_new_tokens == 512
