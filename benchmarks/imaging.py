"""Imaging benchmark: locate + select + fetch + decode + window a 3000x2500 16-bit JPEG 2000 PA
radiograph from a real Orthanc, in a study that also holds a lateral view.

    .venv/bin/python benchmarks/imaging.py [--rows 3000 --cols 2500 --repeat 3]

Starts its own Orthanc on loopback (tests/support/orthanc.py), prints wall time per stage (best of
``--repeat``) and the bytes transferred for the one instance versus the whole study. Target (issue 4):
the whole path under 1.5 s on the 2-core dev machine, most of it decode.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests
from pydicom.uid import JPEG2000Lossless

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imaging import DicomWebSource, locate_studies, select_frontal  # noqa: E402
from imaging.pixels import decode_first_frame, to_display  # noqa: E402
from tests.support.orthanc import OrthancServer  # noqa: E402
from tests.support.synthetic_cxr import compress, make_study, to_bytes  # noqa: E402


def whole_study_bytes(dicomweb_url: str, study_uid: str) -> int:
    """Bytes of a WADO-RS retrieve of the whole study, as stored (what a naive client would pull)."""
    r = requests.get(f"{dicomweb_url}/studies/{study_uid}", timeout=120,
                     headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    r.raise_for_status()
    return len(r.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--cols", type=int, default=2500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    t0 = time.perf_counter()
    study = make_study(("PA", "LL"), bits=16, rows=args.rows, cols=args.cols)
    encoded = [compress(ds, JPEG2000Lossless) for ds in study]
    print(f"made + J2K-encoded 2 x {args.cols}x{args.rows} 16-bit images in {time.perf_counter() - t0:.1f} s "
          f"({', '.join(f'{len(to_bytes(ds)) / 1e6:.1f} MB' for ds in encoded)})")

    with tempfile.TemporaryDirectory() as tmp, OrthancServer(Path(tmp)) as orthanc:
        orthanc.store(*encoded)
        source = DicomWebSource.from_url(orthanc.dicomweb_url, timeout_s=120)
        accession = study[0].AccessionNumber
        best: dict[str, float] = {}
        fetched = 0
        for _ in range(max(1, args.repeat)):
            times = {}
            t = time.perf_counter()
            [match] = locate_studies(source, accession_number=accession)
            times["locate (QIDO-RS)"] = time.perf_counter() - t
            t = time.perf_counter()
            selection = select_frontal(source, match)
            times["select (QIDO-RS metadata)"] = time.perf_counter() - t
            t = time.perf_counter()
            retrieved = source.retrieve_instance(match.study_instance_uid, selection.series_instance_uid,
                                                 selection.sop_instance_uid)
            times["fetch (WADO-RS, as stored)"] = time.perf_counter() - t
            t = time.perf_counter()
            arr, photometric = decode_first_frame(retrieved.dataset, "benchmark")    # (H, W) uint16
            times["decode (JPEG 2000 lossless)"] = time.perf_counter() - t
            t = time.perf_counter()
            pixels, _ = to_display(retrieved.dataset, arr, photometric)                # (H, W) uint8
            times["window (LUTs -> uint8)"] = time.perf_counter() - t
            times["total"] = sum(times.values())
            best = {k: min(v, best.get(k, v)) for k, v in times.items()}
            fetched = retrieved.bytes_transferred
        assert selection.view == "PA" and pixels.shape == (args.rows, args.cols)
        whole = whole_study_bytes(orthanc.dicomweb_url, match.study_instance_uid)
        alive = orthanc.alive()

    print(f"\nbest of {args.repeat} (wall seconds)")
    for stage, seconds in best.items():
        print(f"  {stage:<30} {seconds:7.3f}")
    print(f"\nbytes: selected instance {fetched / 1e6:.2f} MB, whole study {whole / 1e6:.2f} MB, "
          f"ratio {fetched / whole:.2f} (saved {(whole - fetched) / 1e6:.2f} MB)")
    print(f"Orthanc alive after the run: {alive}")


if __name__ == "__main__":
    main()
