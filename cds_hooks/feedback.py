"""CDS Hooks feedback bodies: checked here, stored idempotently by the view."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from cds_hooks.errors import BadRequest

OUTCOMES = ("accepted", "overridden")


def _instant(value: Any) -> bool:
    if not isinstance(value, str) or "T" not in value:
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def parse_feedback(body: Any) -> list[dict]:
    """Check a feedback body and return its items.

    Parameters
    ----------
    body : Any
        The decoded JSON (None when it did not parse).

    Returns
    -------
    list of dict
        The ``feedback`` items, each with ``card``, ``outcome``, ``outcomeTimestamp`` and, when
        accepted, ``acceptedSuggestions``.

    Raises
    ------
    BadRequest
        Not ``{"feedback": [...]}``; an item without ``card``/``outcome``/``outcomeTimestamp``; an
        unknown outcome; ``accepted`` without ``acceptedSuggestions``; a malformed override reason.
    """
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list) or not body["feedback"]:
        raise BadRequest('feedback body must be {"feedback": [ {card, outcome, outcomeTimestamp, ...} ]}')
    items = []
    for i, item in enumerate(body["feedback"]):
        where = f"feedback[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} is not an object")
        missing = [k for k in ("card", "outcome", "outcomeTimestamp") if not item.get(k)]
        if missing:
            raise BadRequest(f"{where} is missing {', '.join(missing)}")
        if not isinstance(item["card"], str):
            raise BadRequest(f"{where}.card must be the card's uuid (a string)")
        if item["outcome"] not in OUTCOMES:
            raise BadRequest(f"{where}.outcome {item['outcome']!r} is not one of {', '.join(OUTCOMES)}")
        if not _instant(item["outcomeTimestamp"]):
            raise BadRequest(f"{where}.outcomeTimestamp {item['outcomeTimestamp']!r} is not an ISO 8601 instant")
        if item["outcome"] == "accepted":
            accepted = item.get("acceptedSuggestions")
            if not isinstance(accepted, list) or not accepted or not all(
                    isinstance(s, dict) and isinstance(s.get("id"), str) and s["id"] for s in accepted):
                raise BadRequest(f"{where}: outcome 'accepted' needs acceptedSuggestions [{{\"id\": ...}}]")
        reason = item.get("overrideReason")
        if reason is not None:
            if not isinstance(reason, dict):
                raise BadRequest(f"{where}.overrideReason must be an object")
            coding = reason.get("reason")
            if coding is not None and not (isinstance(coding, dict) and coding.get("code") and coding.get("system")):
                raise BadRequest(f"{where}.overrideReason.reason must be a Coding with code and system")
        items.append(item)
    return items
