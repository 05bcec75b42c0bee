"""`cxr-cds demo`: the whole service on an embedded default, with nothing else on the machine.

It prepares (once) a tiny random-weight model in the published CXR-LLAVA-v2 layout and a synthetic
sample study (PA + lateral) in a local folder that serves as the DICOM source, writes a ready
`order-sign` request, prints the `curl` command that fires it, and serves on 127.0.0.1:8080.
The demo model's weights are random: its text is meaningless by design.
"""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import click
import numpy as np

DEMO_ACCESSION = "DEMO-ACC-0001"
DEMO_PATIENT_ID = "DEMO-MRN-0001"
DEMO_STUDY_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000000001"
ORDER_SIGN_SERVICE_ID = "cxr-ai-order-sign"
DEMO_CORS_ORIGINS = "https://sandbox.cds-hooks.org"


def chest_phantom(rows: int = 640, cols: int = 528, *, seed: int = 0) -> np.ndarray:
    """A procedural frontal chest: body, lungs, heart, spine, ribs, noise. Returns (H, W) float in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    yn, xn = y / rows, x / cols
    img = np.full((rows, cols), 0.05)
    body = ((xn - 0.5) / 0.46) ** 2 + ((yn - 0.55) / 0.55) ** 2 < 1
    img[body] = 0.75
    for cx in (0.31, 0.69):  # lungs are dark (air)
        lung = ((xn - cx) / 0.15) ** 2 + ((yn - 0.45) / 0.30) ** 2 < 1
        img[lung] = 0.25
    for k in range(8):  # ribs: bright arcs across the lungs
        arc = np.abs(yn - (0.22 + 0.07 * k) - 0.05 * ((xn - 0.5) / 0.4) ** 2) < 0.008
        img[arc & body] += 0.15
    heart = ((xn - 0.55) / 0.14) ** 2 + ((yn - 0.62) / 0.13) ** 2 < 1
    img[heart] = 0.8
    img[(np.abs(xn - 0.5) < 0.035) & body] = 0.9  # spine
    img += rng.normal(0, 0.01, img.shape)
    return np.clip(img, 0, 1)


def write_sample_study(folder: Path) -> list[Path]:
    """Write a synthetic DX study (PA + lateral) with the demo accession; returns the file paths."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, view in enumerate(("PA", "LL"), start=1):
        pixels = chest_phantom(seed=number) if view == "PA" else chest_phantom(seed=number)[:, ::-1]
        arr = np.round(pixels * 4095).astype(np.uint16)  # 12-bit, MONOCHROME2
        sop = generate_uid(entropy_srcs=[DEMO_STUDY_UID, view])
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", sop
        ds.StudyInstanceUID = DEMO_STUDY_UID
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[DEMO_STUDY_UID, view, "series"])
        ds.StudyDate = ds.SeriesDate = "20261128"
        ds.StudyTime = "093000"
        ds.AccessionNumber = DEMO_ACCESSION
        ds.Modality = "DX"
        ds.StudyDescription = "XR CHEST PA AND LATERAL"
        ds.SeriesDescription = f"CHEST {view}"
        ds.PatientName = "DEMO^SYNTHETIC"
        ds.PatientID = DEMO_PATIENT_ID
        ds.PatientBirthDate = "19610402"
        ds.PatientSex = "F"
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = view
        ds.PatientOrientation = ["L", "F"] if view == "PA" else ["P", "F"]
        ds.SeriesNumber, ds.InstanceNumber = number, 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = arr.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelSpacing = [0.5, 0.5]
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelData = arr.tobytes()
        path = folder / f"{view}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def sample_order_sign_request() -> dict:
    """An order-sign request for a chest X-ray whose identifier carries the demo accession number."""
    return {
        "hook": "order-sign",
        "hookInstance": "d1f0a1c2-0000-4000-8000-000000000001",
        "context": {
            "userId": "Practitioner/demo-clinician",
            "patientId": "demo-patient",
            "encounterId": "demo-encounter",
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": {
                    "resourceType": "ServiceRequest",
                    "id": "demo-cxr-order",
                    "status": "draft",
                    "intent": "order",
                    "identifier": [{
                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                             "code": "ACSN"}]},
                        "value": DEMO_ACCESSION,
                    }],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5",
                                         "display": "XR Chest 2 Views"}]},
                    "subject": {"reference": "Patient/demo-patient"},
                    "encounter": {"reference": "Encounter/demo-encounter"},
                    "reasonCode": [{"text": "Cough and fever for 3 days"}],
                }}],
            },
        },
        "prefetch": {
            "patient": {
                "resourceType": "Patient", "id": "demo-patient", "gender": "female", "birthDate": "1961-04-02",
                "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                     "code": "MR"}]},
                                "value": DEMO_PATIENT_ID}],
            },
            "conditions": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
                "resourceType": "Condition", "id": "c1",
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": "active"}]},
                "code": {"text": "Congestive heart failure"},
                "subject": {"reference": "Patient/demo-patient"}}}]},
            "encounter": {"resourceType": "Encounter", "id": "demo-encounter", "status": "in-progress",
                          "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                    "code": "EMER", "display": "emergency"}},
        },
    }


def prepare(home: Path) -> dict:
    """Create the demo model, sample study and request under `home` (idempotent). Returns their paths."""
    from model_runtime import init_tiny

    home.mkdir(parents=True, exist_ok=True)
    model_dir = home / "model"
    if not (model_dir / "config.json").is_file():
        click.echo(f"Generating the tiny demo model (random weights) in {model_dir} ...", err=True)
        init_tiny(model_dir, seed=0)
    studies = home / "studies"
    if not any(studies.glob("*.dcm")):
        write_sample_study(studies)
    request_path = home / "order-sign.json"
    request_path.write_text(json.dumps(sample_order_sign_request(), indent=2))
    return {"model": model_dir, "studies": studies, "request": request_path, "db": home / "cxr-cds.sqlite"}


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--home", default=".demo", show_default=True, type=click.Path(path_type=Path),
              help="Where the demo model, sample study and database live.")
@click.option("--prepare-only", is_flag=True, help="Create the demo files and exit without serving.")
@click.pass_context
def demo(ctx: click.Context, host: str, port: int, home: Path, prepare_only: bool) -> None:
    """Serve the CDS Hooks service on an embedded default: local DICOM folder + tiny demo model."""
    paths = prepare(home.resolve())
    env = {
        "CXR_CDS_DICOM_FOLDER": str(paths["studies"]),
        "CXR_CDS_MODEL": str(paths["model"]),
        "CXR_CDS_AUTH": "none",
        "CXR_CDS_DB": str(paths["db"]),
        "CXR_CDS_MAX_NEW_TOKENS": "48",
        # the first call computes the draft on the CPU: let it finish within the call in the demo
        "CXR_CDS_DEADLINE_S": "60",
        "CXR_CDS_PUBLIC_URL": f"http://{host}:{port}",
        # the browser origin the demo may be tried from: the public CDS Hooks sandbox (set
        # CXR_CDS_CORS_ORIGINS to add a sandbox served on loopback, e.g. http://127.0.0.1:8000)
        "CXR_CDS_CORS_ORIGINS": DEMO_CORS_ORIGINS,
    }
    for key, value in env.items():
        os.environ.setdefault(key, value)
    url = f"http://{host}:{port}/cds-services/{ORDER_SIGN_SERVICE_ID}"
    curl = (f"curl -s -X POST {url} -H 'Content-Type: application/json' "
            f"-d @{shlex.quote(str(paths['request']))} | python3 -m json.tool")
    click.echo("\nDEMO: the model has RANDOM WEIGHTS and writes meaningless text; it shows the plumbing, "
               "not clinical performance. Every output is an AI draft for clinician review.")
    click.echo(f"Discovery:   curl -s http://{host}:{port}/cds-services | python3 -m json.tool")
    click.echo(f"Fire order-sign and show the card:\n  {curl}\n")
    if prepare_only:
        return
    from cds_hooks.commands.serve import serve

    ctx.invoke(serve, host=host, port=port)
