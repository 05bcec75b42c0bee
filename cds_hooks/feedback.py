"""CDS Hooks feedback bodies: checked here, stored idempotently by the view."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from cds_hooks.errors import BadRequest, InvalidField
from cds_hooks.services import field_path, lone_surrogate

OUTCOMES = ("accepted", "overridden")


def _instant(value: Any) -> bool:
    if not isinstance(value, str) or "T" not in value:
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


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
        unknown outcome; ``accepted`` without ``acceptedSuggestions``; ``acceptedSuggestions`` (any
        outcome) not an array of ``{"id": string}``; an override reason whose ``code``/``system`` are
        not strings, or a ``userComment`` that is not a string. Every value the store reads is
        type-checked here, so a crafted body gets 400, never a 500.
    InvalidField
        A string holding a lone surrogate (``"\\udc00"``: it cannot be stored), naming the field. The
        request body decoder refuses those already; this holds for bodies from anywhere else too.
    """
    where = lone_surrogate(body)
    if where is not None:
        field = field_path(where)
        raise InvalidField(f"{field} holds a lone UTF-16 surrogate, which is not text; send valid Unicode",
                           field=field, code="invalid-text")
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
        if not isinstance(item["outcome"], str) or item["outcome"] not in OUTCOMES:
            shown = repr(item["outcome"]) if isinstance(item["outcome"], str) else "a non-string value"
            raise BadRequest(f"{where}.outcome {shown[:60]} is not one of {', '.join(OUTCOMES)}")
        if not _instant(item["outcomeTimestamp"]):
            shown = repr(item["outcomeTimestamp"]) if isinstance(item["outcomeTimestamp"], str) else "(not a string)"
            raise BadRequest(f"{where}.outcomeTimestamp {shown[:60]} is not an ISO 8601 instant")
        accepted = item.get("acceptedSuggestions")
        if accepted is not None and not (isinstance(accepted, list) and all(
                isinstance(s, dict) and isinstance(s.get("id"), str) and s["id"] for s in accepted)):
            raise BadRequest(f"{where}.acceptedSuggestions must be an array of {{\"id\": <suggestion uuid>}} objects")
        if item["outcome"] == "accepted" and not accepted:
            raise BadRequest(f"{where}: outcome 'accepted' needs acceptedSuggestions [{{\"id\": ...}}]")
        reason = item.get("overrideReason")
        if reason is not None:
            if not isinstance(reason, dict):
                raise BadRequest(f"{where}.overrideReason must be an object")
            coding = reason.get("reason")
            if coding is not None and not (isinstance(coding, dict) and _text(coding.get("code"))
                                           and _text(coding.get("system"))
                                           and (coding.get("display") is None or isinstance(coding["display"], str))):
                raise BadRequest(f"{where}.overrideReason.reason must be a Coding with code and system (strings)")
            if reason.get("userComment") is not None and not isinstance(reason["userComment"], str):
                raise BadRequest(f"{where}.overrideReason.userComment must be a string")
        items.append(item)
    return items
