"""`cxr-cds analyze`: the whole pipeline without HTTP, on a local DICOM file or a study in a PACS."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _context_from_bundle(path: Path):
    """Read Patient, ServiceRequest, Conditions and Encounter out of a FHIR Bundle file."""
    from fhir_mapping import patient_reference, read_context, read_order

    try:
        bundle = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        _fail(f"cannot read the context bundle {path}: {exc}; give a FHIR Bundle in JSON")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        _fail(f"{path} is not a FHIR Bundle (resourceType {bundle.get('resourceType')!r}); "
              "give a Bundle holding Patient, ServiceRequest, Condition and Encounter resources")
    by_type: dict[str, list[dict]] = {}
    for entry in bundle.get("entry") or []:
        resource = (entry or {}).get("resource") or {}
        by_type.setdefault(resource.get("resourceType"), []).append(resource)
    patient = (by_type.get("Patient") or [None])[0]
    service_request = (by_type.get("ServiceRequest") or [None])[0]
    encounter = (by_type.get("Encounter") or [None])[0]
    context = read_context(patient=patient, service_request=service_request,
                           conditions=by_type.get("Condition") or [], encounter=encounter)
    order = read_order(service_request) if service_request else None
    return context, order, (patient_reference(patient) if patient else None), \
        (order.encounter_reference if order else None), patient


def _refuse_mismatch(patient: dict | None, order, *, patient_id: str | None, accession_number: str | None) -> None:
    """Refuse, as the service does, to attach a bundle's Patient or order to another patient's image.

    The image's DICOM PatientID must be one of the Patient's identifiers (when both are known), and the
    order's accession number must be the image's (when both are known). Values are never printed.
    """
    from fhir_mapping import patient_mrns

    mrns = patient_mrns(patient) if patient else ()
    if patient_id and mrns and patient_id.strip() not in {m.strip() for m in mrns}:
        _fail("the image's DICOM PatientID is not one of the context Patient's identifiers: this bundle "
              "belongs to another patient; give the bundle of the patient in the image")
    ordered = getattr(order, "accession_number", None) if order is not None else None
    if ordered and accession_number and ordered.strip() != accession_number.strip():
        _fail("the image's AccessionNumber is not the context order's (ServiceRequest identifier ACSN): "
              "this order is for another study; give the order of this image")


def _dicom_patient_id(path: Path) -> str | None:
    import pydicom

    try:
        value = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID")
    except Exception:     # unreadable headers are reported by read_radiograph, with its typed error
        return None
    return str(value).strip() or None if value is not None else None


def _write_sr(path: Path, analysis, *, file: Path | None, source) -> dict:
    """Write the analysis' DICOM SR to ``path``; the header comes from the file read or the PACS (WADO-RS)."""
    from dicom_sr import DicomSrError, SrInputs, SrRecord, build_sr, fetch_image_header, read_image_header

    study = analysis.study
    try:
        header = read_image_header(file) if file is not None else fetch_image_header(
            source, study["study_instance_uid"], study["series_instance_uid"], study["sop_instance_uid"])
        dataset = build_sr(SrInputs.from_analysis(analysis.to_json(), header))
        dataset.save_as(path, enforce_file_format=True)
    except DicomSrError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the SR to {path} ({exc.strerror}); choose a writable path")
    return {"path": str(path), **SrRecord.of(dataset).to_json()}


@click.command()
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--context", "context_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="FHIR Bundle (JSON) with Patient, ServiceRequest, Condition, Encounter.")
@click.option("--model", "model_ref", default=None,
              help="Checkpoint directory or hub id [default: $CXR_CDS_MODEL, else the demo model in .demo/model].")
@click.option("--revision", default=None, help="Hub revision (commit) to pin.")
@click.option("--quantization", type=click.Choice(["none", "8bit", "4bit", "int4"]), default=None)
@click.option("--dicomweb", "dicomweb_url", default=None, help="DICOMweb base URL of a PACS (instead of FILE).")
@click.option("--dicomweb-username", envvar="CXR_CDS_DICOMWEB_USERNAME", default=None,
              help="PACS basic-auth user [env CXR_CDS_DICOMWEB_USERNAME].")
@click.option("--dicomweb-password", envvar="CXR_CDS_DICOMWEB_PASSWORD", default=None,
              help="PACS basic-auth password [env CXR_CDS_DICOMWEB_PASSWORD].")
@click.option("--dicomweb-bearer-token", envvar="CXR_CDS_DICOMWEB_BEARER_TOKEN", default=None,
              help="PACS bearer token instead of basic auth [env CXR_CDS_DICOMWEB_BEARER_TOKEN].")
@click.option("--accession", default=None, help="AccessionNumber to look up (with --dicomweb).")
@click.option("--study-uid", default=None, help="StudyInstanceUID to look up (with --dicomweb).")
@click.option("--patient-id", default=None, help="PatientID; the newest CR/DX study is read (with --dicomweb).")
@click.option("--template", default="report_context.v1", show_default=True, help="Prompt template id.")
@click.option("--max-new-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=0.0, show_default=True,
              help="0 = greedy (reproducible); the released default is 0.2.")
@click.option("--decode-min-short-edge", type=click.IntRange(min=0), default=1024, show_default=True,
              envvar="CXR_CDS_DECODE_MIN_SHORT_EDGE",
              help="Decode JPEG 2000 at the smallest resolution keeping this short edge, as the service "
                   "does (the model reads 512 px); 0 = full resolution.")
@click.option("--scores", "with_scores", is_flag=True, help="Also compute per-finding yes/no probabilities.")
@click.option("--sr", "sr_path", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Also write the draft as a DICOM Structured Report (TID 1500 Comprehensive SR, in the "
                   "image's study) to this file: the object CXR_CDS_PACS_WRITE=sr stores in the PACS.")
@click.option("--backend", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
              envvar="CXR_CDS_BACKEND", help="hf: in-process; vllm: the decoder on --vllm-url [env CXR_CDS_BACKEND].")
@click.option("--vllm-url", default=None, envvar="CXR_CDS_VLLM_URL",
              help="Base URL of the vLLM server (with --backend vllm) [env CXR_CDS_VLLM_URL].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def analyze(file, context_path, model_ref, revision, quantization, dicomweb_url, dicomweb_username,
            dicomweb_password, dicomweb_bearer_token, accession, study_uid,
            patient_id, template, max_new_tokens, temperature, decode_min_short_edge, with_scores,
            as_json, sr_path, backend="hf", vllm_url=None) -> None:
    """Analyse one chest radiograph and print the AI draft (report, findings, FHIR Bundle)."""
    from fhir_mapping import FhirMappingError
    from imaging import DicomWebSource, ImagingError, read_radiograph
    from model_runtime import GenerationSettings, ModelConfig, ModelRuntimeError, open_backend
    from prompts import ClinicalContext
    from prompts.render import PromptError

    from cds_hooks.commands.model import check_backend
    from cds_hooks.pipeline import analyze_image, plan_study, run_analysis

    if (file is None) == (dicomweb_url is None):
        _fail("give either a DICOM FILE or --dicomweb URL with --accession, --study-uid or --patient-id")
    if dicomweb_url and not (accession or study_uid or patient_id):
        _fail("--dicomweb needs --accession, --study-uid or --patient-id to find the study")

    model_ref = model_ref or os.environ.get("CXR_CDS_MODEL")
    if not model_ref:
        demo_model = Path(".demo/model")
        if not (demo_model / "config.json").is_file():
            from model_runtime import init_tiny

            click.echo(f"No --model given: generating the tiny demo model (random weights) in {demo_model}",
                       err=True)
            init_tiny(demo_model, seed=0)
        model_ref = str(demo_model)

    try:
        context, order, patient_ref, encounter_ref, patient = (
            _context_from_bundle(context_path) if context_path else (ClinicalContext(), None, None, None, None))
        check_backend(backend, vllm_url)
        engine = open_backend(backend, ModelConfig(model=model_ref, revision=revision, quantization=quantization),
                              vllm_url=vllm_url)
        settings = GenerationSettings(temperature=temperature, max_new_tokens=max_new_tokens)
        generate = lambda request: engine.generate([request])[0]  # noqa: E731 - one request, no worker
        score = engine.score_yes_no if with_scores else None
        common = dict(context=context, generate=generate, order=order, patient_reference=patient_ref,
                      encounter_reference=encounter_ref, template=template, settings=settings, score=score)
        if file is not None:
            image = read_radiograph(file, min_short_edge=decode_min_short_edge or None)
            if context_path:
                _refuse_mismatch(patient, order, patient_id=_dicom_patient_id(file),
                                 accession_number=image.accession_number)
            analysis = analyze_image(image, **common)
        else:
            source = DicomWebSource.from_url(dicomweb_url, username=dicomweb_username,
                                             password=dicomweb_password, bearer_token=dicomweb_bearer_token)
            plan = plan_study(source, study_instance_uid=study_uid, accession_number=accession,
                              patient_id=patient_id)
            if context_path:
                _refuse_mismatch(patient, order, patient_id=plan.study.patient_id,
                                 accession_number=plan.study.accession_number)
            analysis = run_analysis(source, plan, min_short_edge=decode_min_short_edge or None, **common)
    except (ImagingError, ModelRuntimeError, FhirMappingError, PromptError) as exc:
        _fail(str(exc))
    sr = _write_sr(sr_path, analysis, file=file, source=None if file is not None else source) if sr_path else None

    if as_json:
        out = analysis.to_json()
        click.echo(json.dumps({k: out[k] for k in
                               ("report", "findings", "fhir", "study", "model", "timings", "scores",
                                "analysis_id")} | ({"sr": sr} if sr else {}), indent=2))
        return
    click.echo("AI-GENERATED DRAFT FOR CLINICIAN REVIEW - NOT A FINAL REPORT")
    click.echo(f"Study {analysis.study.get('study_instance_uid')}  view {analysis.study.get('view_position')}"
               f"  model {analysis.model.get('name')} ({analysis.model.get('quantization')})"
               f"  prompt {analysis.model.get('prompt_id')}.{analysis.model.get('prompt_version')}")
    click.echo("\n" + analysis.report_text.strip() + "\n")
    for f in analysis.findings.mentioned():
        click.echo(f"  {f.name:<18} {f.presence}")
    if sr:
        click.echo(f"\nDICOM SR written to {sr['path']} (SOP Instance UID {sr['sop_instance_uid']})")
