"""The labeler against human labels of real reports: the Indiana University chest X-ray collection
and its coders' MeSH indexing (source, label mapping, uncertain policies and splits:
tests/prompts/iu_reports.py).

The figures are printed for the held-out half of the reports (the rules were written against the
other half); the floors sit a margin under what the labeler reached there, per uncertain policy.
"""
from __future__ import annotations

import pytest

from prompts import PRIMARY_FINDINGS
from tests.prompts import iu_reports

# Held-out macro F1 when these floors were set (prompts/labeler.py and lexicon of this commit),
# per uncertain policy: exclude 0.939, positive 0.834, negative 0.863. Before the issue-10 changes:
# 0.900, 0.826, 0.835.
MACRO_FLOOR = {"exclude": 0.91, "positive": 0.81, "negative": 0.84}
EDEMA_FLOOR = {"exclude": 0.85, "negative": 0.74}     # the finding the issue measured at 0.54


@pytest.fixture(scope="module")
def reports(request) -> list[iu_reports.Report]:
    cache = getattr(request.config, "cache", None)     # absent with -p no:cacheprovider
    where = cache.mkdir("iu-reports") if cache is not None else request.config.rootpath / ".pytest_cache" / "d" / "iu-reports"
    source = iu_reports.fetch(where)
    return iu_reports.load(source)


@pytest.fixture(scope="module")
def held_out(reports) -> dict:
    return iu_reports.score([r for r in reports if r.split == "held-out"])


def test_the_report_set_is_the_published_one(reports):
    # 3,955 reports, 28 of them with neither FINDINGS nor IMPRESSION; about half in each split
    assert len(reports) == 3927
    assert len({r.uid for r in reports}) == len(reports)
    halves = [sum(r.split == s for r in reports) for s in iu_reports.SPLITS]
    assert min(halves) > 1900
    positives = {name: sum(r.labels[name] for r in reports) for name in PRIMARY_FINDINGS}
    assert positives == {"atelectasis": 332, "cardiomegaly": 396, "consolidation": 30, "edema": 46,
                         "pleural_effusion": 162, "pneumothorax": 27}
    first = reports[0]
    assert first.uid == "CXR1" and first.major == ("normal",) and not any(first.labels.values())
    assert first.text.startswith("FINDINGS: The cardiac silhouette and mediastinum size are within normal limits.")


def test_mesh_mapping():
    labels = iu_reports.labels_from_mesh(["Cardiac Shadow/enlarged/mild", "Hydropneumothorax/left/large",
                                          "Pulmonary Congestion/mild", "Costophrenic Angle/left/blunted"])
    assert labels == {"atelectasis": False, "cardiomegaly": True, "consolidation": False, "edema": False,
                      "pleural_effusion": True, "pneumothorax": True}


def test_macro_f1_on_held_out_reports(held_out, capsys):
    with capsys.disabled():
        print("\n" + iu_reports.table(held_out, "IU X-ray reports, held-out half, vs the coders' MeSH labels"))
    for policy, floor in MACRO_FLOOR.items():
        assert held_out[policy]["macro_f1"] >= floor, (policy, held_out[policy]["macro_f1"])
    for policy, floor in EDEMA_FLOOR.items():
        assert held_out[policy]["per_finding"]["edema"]["f1"] >= floor, policy


def test_uncertain_stays_a_minority_of_the_labelled_findings(held_out):
    # The "exclude" figure is only meaningful while the labeler commits: most coder-labelled
    # findings must be decided (present/absent), not left uncertain (0.83 when this was written).
    per = held_out["exclude"]["per_finding"]
    decided_positives = sum(v["tp"] + v["fn"] for v in per.values())
    all_positives = sum(v["tp"] + v["fn"] for v in held_out["positive"]["per_finding"].values())
    assert decided_positives / all_positives >= 0.78


def test_a_local_copy_that_is_not_there_says_what_to_point_at(monkeypatch, tmp_path):
    monkeypatch.setenv(iu_reports.ENV, str(tmp_path / "missing.whl"))
    with pytest.raises(iu_reports.IUReportsUnavailable, match=r"missing\.whl is not a file; point it at "
                                                              r"torchxrayvision-1\.5\.7-py3-none-any\.whl"):
        iu_reports.fetch(tmp_path)


def test_a_wheel_without_the_reports_is_refused(tmp_path):
    import zipfile
    wheel = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("other/__init__.py", "")
    with pytest.raises(iu_reports.IUReportsUnavailable, match=r"has no torchxrayvision/data/NLMCXR_reports\.tgz"):
        iu_reports.load(wheel)
