"""`cxr-cds findings`: report text on stdin, coded findings out."""
from __future__ import annotations

import json

from click.testing import CliRunner

from cds_hooks.cli import main
from prompts import FINDING_NAMES

REPORT = ("FINDINGS: Small left pleural effusion. No pneumothorax. Possible right lower lobe pneumonia.\n"
          "IMPRESSION: No acute cardiopulmonary process other than the effusion.")


def run(args, stdin):
    return CliRunner().invoke(main, ["findings", *args], input=stdin)


def test_json_output_is_keyed_by_finding():
    result = run(["--json"], REPORT)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data) == list(FINDING_NAMES)
    assert data["pleural_effusion"] == {"presence": "present", "evidence": "Small left pleural effusion.",
                                        "span": [10, 38], "laterality": "left", "severity": "small"}
    assert data["pneumothorax"]["presence"] == "absent"
    assert data["pneumonia"]["presence"] == "uncertain"
    assert data["fracture"] == {"presence": "not_mentioned", "evidence": None, "span": None,
                                "laterality": None, "severity": None}
    assert REPORT[10:38] == "Small left pleural effusion."


def test_table_output():
    result = run([], REPORT)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["finding", "presence", "side", "severity", "evidence"]
    assert len(lines) == 1 + len(FINDING_NAMES)
    effusion = next(line for line in lines if line.startswith("pleural_effusion"))
    assert effusion.split() == ["pleural_effusion", "present", "left", "small", "Small", "left", "pleural",
                                "effusion."]
    assert next(line for line in lines if line.startswith("fracture")).split() == ["fracture", "not_mentioned"]


def test_empty_input_is_a_one_line_error_with_exit_code_2():
    for stdin in ("", "  \n\t\n"):
        result = run(["--json"], stdin)
        assert result.exit_code == 2
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1
        assert result.stderr.startswith("Error: no report text on stdin; pipe a report in")
