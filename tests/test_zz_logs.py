"""Issue 11: no synthetic patient's name, MRN or accession number, and no token, in any log line of the suite.

Named to run last: the session fixture ``session_log`` (tests/conftest.py) has collected every log record
written by the tests before this one, and the servers the suite started (``cxr-cds serve`` under
gunicorn) wrote their output to ``serve.log`` files under pytest's base temporary directory.
"""
from __future__ import annotations

import logging

from tests.support.identifiers import find_leaks, server_log_lines


def test_the_leak_finder_finds_each_kind_of_identifier():
    lines = ["hookInstance=x study for MRN0042", "accession ACC0042 failed", "name Testpatient^Jane",
             "Bearer eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJodHRwcyJ9.c2ln", "AccessionNumber ACC0123456789AB",
             "analysis 1f2e stored for study 1.2.826.0.1.3680043.8.498.4200001 (acc:3f9a0c1b2d4e)"]
    found = find_leaks(lines)
    assert len(found) == 5 and "acc:3f9a0c1b2d4e" not in "".join(found)


def test_the_session_log_is_collected(session_log):
    logging.getLogger("cds_hooks.boundary").info("the log collector is installed")
    assert session_log.lines[-1].endswith("INFO cds_hooks.boundary: the log collector is installed")


def test_no_identifier_or_token_in_any_log_line_of_the_suite(session_log, tmp_path_factory):
    lines = list(session_log.lines) + server_log_lines(tmp_path_factory.getbasetemp())
    leaks = find_leaks(lines)
    assert not leaks, f"{len(leaks)} log line(s) hold a synthetic identifier or a token:\n" + "\n".join(leaks[:50])
