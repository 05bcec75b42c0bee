"""What the review page stores: renditions, link context, per-finding verdicts, decisions, accepted drafts.

Its tables live in the service's one store (migration 3 in ``cds_hooks.store.migrations``), SQLite
or PostgreSQL alike; the interface is SQL-free:

- ``put_rendition(analysis_id, png)`` / ``rendition(analysis_id) -> bytes | None``
- ``put_link(card_uuid, LinkContext)`` / ``link(card_uuid) -> LinkContext | None``
- ``put_verdicts(card_uuid, analysis_id, {finding: "agree"|"disagree"}) -> int`` (latest verdict wins)
- ``verdicts(analysis_id) -> {finding: verdict}``
- ``put_decision(Decision)`` / ``decision(analysis_id) -> Decision | None`` (latest wins)
- ``count_verdicts()``, ``count_decisions()``

Like the CDS feedback table, nothing here holds patient identifiers. The references the EHR sent
for a draft card (``Patient/<id>``, ``Encounter/<id>``, the user) are kept with the link only when
the site writes accepted drafts back (``CXR_CDS_WRITE_BACK=fhir``), which needs them; comments are
not stored (only whether one was given). The accepted draft keeps the clinician's corrected report text: that is the clinical
content to write back.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Literal, Mapping

Verdict = Literal["agree", "disagree"]
DecisionKind = Literal["accept", "reject"]



def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class LinkContext:
    """What a hook call knew about a draft card, for writing the accepted draft back.

    Attributes
    ----------
    analysis_id : str
    kind : str
        The card's kind (``draft``, ``prior``, ``latest``); only a verified ``draft`` may be written back.
    verified : bool
        The study's PatientID matched one of the Patient's MRNs.
    service_id, fhir_server, patient_id, encounter_id, user_id
        From the hook request (``fhirServer``, ``context.patientId``, ``context.encounterId``,
        ``context.userId``); ``None`` when absent.
    """

    analysis_id: str
    kind: str
    verified: bool
    service_id: str
    fhir_server: str | None = None
    patient_id: str | None = None
    encounter_id: str | None = None
    user_id: str | None = None


@dataclass(frozen=True)
class Decision:
    """The clinician's decision on one draft from the review page.

    ``write_back`` is ``off`` (site setting), ``not-eligible`` (not a verified draft of the ordered
    study, or no FHIR server known), ``written`` or ``failed``.
    """

    card_uuid: str
    analysis_id: str
    decision: DecisionKind
    reason_code: str | None
    has_comment: bool
    edited: bool
    report_text: str | None
    write_back: str
    created: str = ""


class ReviewStore:
    """The review tables in the service's store.

    Parameters
    ----------
    store : cds_hooks.store.Store
        The service database: the same one as analyses and CDS feedback.
    keep_references : bool
        Keep the EHR's Patient/Encounter/user references with each link (needed to write back).
    """

    def __init__(self, store, *, keep_references: bool = True):
        self.store = store
        self.keep_references = keep_references

    # -- renditions -------------------------------------------------------------------------------
    def put_rendition(self, analysis_id: str, body: bytes, media_type: str = "image/png") -> None:
        """Store the image an analysis read (``rendition.render_rendition``); the first one wins."""
        self.store.execute("INSERT INTO review_renditions VALUES (?, ?, ?, ?) ON CONFLICT (analysis_id) DO NOTHING",
                           (analysis_id, media_type, bytes(body), _now()))

    def rendition(self, analysis_id: str) -> tuple[bytes, str] | None:
        """``(body, media_type)`` of the analysis' rendition, or None when none was stored."""
        rows = self.store.query("SELECT body, media_type FROM review_renditions WHERE analysis_id = ?",
                                (analysis_id,))
        return (bytes(rows[0][0]), rows[0][1]) if rows else None

    # -- link context -----------------------------------------------------------------------------
    def put_link(self, card_uuid: str, context: LinkContext) -> None:
        """Remember what the hook call knew for the card ``card_uuid`` (its review link carries the uuid)."""
        if not self.keep_references:
            context = LinkContext(**{**asdict(context), "patient_id": None, "encounter_id": None, "user_id": None})
        body = json.dumps(asdict(context))
        self.store.execute("INSERT INTO review_links VALUES (?, ?, ?, ?) ON CONFLICT (card_uuid) DO UPDATE "
                           "SET analysis_id = ?, body = ?", (card_uuid, context.analysis_id, body, _now(),
                                                               context.analysis_id, body))

    def link(self, card_uuid: str) -> LinkContext | None:
        rows = self.store.query("SELECT body FROM review_links WHERE card_uuid = ?", (card_uuid,))
        return LinkContext(**json.loads(rows[0][0])) if rows else None

    # -- verdicts per finding ---------------------------------------------------------------------
    def put_verdicts(self, card_uuid: str, analysis_id: str, verdicts: Mapping[str, Verdict]) -> int:
        """Record agree/disagree per finding (a later verdict on the same finding replaces it); returns how many."""
        now = _now()
        for finding, verdict in verdicts.items():
            self.store.execute("INSERT INTO review_verdicts VALUES (?, ?, ?, ?, ?)",
                               (card_uuid, analysis_id, finding, verdict, now))
        return len(verdicts)

    def verdicts(self, analysis_id: str) -> dict[str, Verdict]:
        """The latest verdict per finding on this analysis."""
        rows = self.store.query("SELECT finding, verdict FROM review_verdicts WHERE analysis_id = ? "
                                "ORDER BY created", (analysis_id,))
        return {finding: verdict for finding, verdict in rows}

    def count_verdicts(self) -> int:
        return self.store.query("SELECT COUNT(*) FROM review_verdicts")[0][0]

    # -- decisions and accepted drafts ------------------------------------------------------------
    def put_decision(self, d: Decision) -> Decision:
        """Record a decision (with the corrected text when accepted); returns it with its timestamp."""
        created = d.created or _now()
        self.store.execute("INSERT INTO review_decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (d.card_uuid, d.analysis_id, d.decision, d.reason_code, int(d.has_comment),
                            int(d.edited), d.report_text, d.write_back, created))
        return Decision(**{**asdict(d), "created": created})

    def decision(self, analysis_id: str) -> Decision | None:
        """The latest decision on this analysis."""
        rows = self.store.query(
            "SELECT card_uuid, analysis_id, decision, reason_code, has_comment, edited, report_text, write_back, "
            "created FROM review_decisions WHERE analysis_id = ? ORDER BY created DESC LIMIT 1", (analysis_id,))
        if not rows:
            return None
        row = rows[0]
        return Decision(row[0], row[1], row[2], row[3], bool(row[4]), bool(row[5]), row[6], row[7], row[8])

    def count_decisions(self) -> int:
        return self.store.query("SELECT COUNT(*) FROM review_decisions")[0][0]
