"""`cxr-cds findings`: report text on stdin -> coded findings (table, or JSON with --json)."""
from __future__ import annotations

import json
import sys

import click


@click.command("findings")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object keyed by finding name.")
def findings(as_json: bool) -> None:
    """Read a chest radiograph report on stdin and print its coded findings.

    Each finding has a presence (present, absent, uncertain, not_mentioned), the sentence it
    rests on (evidence) with its character span, and laterality and severity when stated.
    """
    from prompts import extract_findings   # lazy: keeps `cxr-cds --help` fast

    text = sys.stdin.read()
    if not text.strip():
        # click.UsageError exits with status 2 and prints one line after the usage hint;
        # a bare message reads better here, so print it and exit 2 ourselves.
        click.echo("Error: no report text on stdin; pipe a report in, e.g. "
                   "`echo 'No pneumothorax.' | cxr-cds findings`", err=True)
        raise SystemExit(2)
    result = extract_findings(text)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    rows = [(f.name, f.presence, f.laterality or "", f.severity or "", _one_line(f.evidence or ""))
            for f in result]
    headers = ("finding", "presence", "side", "severity", "evidence")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:-1])]
    for r in (headers, *rows):
        click.echo(("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]).rstrip())


def _one_line(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
