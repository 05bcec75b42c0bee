"""Issue 12, through HTTP: with 20 study-arrival precomputes queued, a hook's job runs next.

One in-process claim loop and a model held at a gate: the first precompute occupies the model, 20
more wait; then a hook arrives for another study. When the gate opens, the order in which studies
reach the model is read from what the model was asked (the image of each request).
"""
from __future__ import annotations

import threading
import time
from datetime import date

from tests.cds_hooks.conftest import CountingGenerate, cxr_order, hook_request, patient


def test_a_hook_job_runs_before_twenty_queued_precomputes(make_app, engine, tmp_path):
    from imaging import FolderSource
    from tests.support import synthetic_cxr as s

    folder = tmp_path / "dicom"
    uids = [f"1.2.826.0.1.3680043.8.498.12{n:04d}1" for n in range(22)]
    for n, uid in enumerate(uids):
        accession = "ACCHOOK1" if n == 21 else f"ACCPRE{n}"
        (ds,) = s.make_study(("PA",), study_uid=uid, accession=accession, patient_id=f"MRNP{n}",
                             study_date=date(2026, 11, 1), rows=96, cols=80, seed=300 + n)
        s.write(ds, folder / f"{ds.SOPInstanceUID}.dcm")
    order: list[bytes] = []

    class Recording(CountingGenerate):
        def __call__(self, request):
            with self._lock:
                order.append(request.image.tobytes()[:4096])
            return super().__call__(request)

    generate = Recording(engine)
    generate.gate = threading.Event()
    app = make_app(source=FolderSource(folder), generate=generate, worker_concurrency=1, deadline_s=60,
                   scores=False)
    client = app.test_client()
    for uid in uids[:21]:                                        # 21 precomputes: 1 running, 20 waiting
        assert client.post(f"/studies/{uid}/analyze").status_code == 202
    end = time.monotonic() + 30
    while generate.calls < 1 and time.monotonic() < end:         # the first one holds the model
        time.sleep(0.02)
    waiting = {}
    hook = threading.Thread(target=lambda: waiting.update(r=client.post(
        "/cds-services/cxr-ai-order-sign",
        json=hook_request("order-sign", "pat-h", [cxr_order("sr-h", "pat-h", accession="ACCHOOK1")],
                          prefetch={"patient": patient("pat-h", "MRNP21")}))))
    hook.start()
    end = time.monotonic() + 30
    while app.extensions["cxr_cds"].runtime.store.queue_depth()["hook"] < 1 and time.monotonic() < end:
        time.sleep(0.02)
    generate.gate.set()                                          # the model is free again
    hook.join(60)
    assert waiting["r"].status_code == 200
    assert waiting["r"].get_json()["cards"][0]["summary"].startswith("AI draft")

    from imaging import read_radiograph

    def seen(uid: str) -> bytes:
        (path,) = [p for p in folder.glob("*.dcm") if read_radiograph(p).study_instance_uid == uid]
        return read_radiograph(path).pixels.tobytes()[:4096]

    # the model's second request is the hook's study, not one of the 20 waiting precomputes
    assert order[1] == seen(uids[21]) and order[0] != seen(uids[21])
