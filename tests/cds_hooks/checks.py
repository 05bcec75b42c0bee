"""CDS Hooks 2.0 response checks (../shared/reference/CDS_HOOKS.md section 8, items 28-41).

Run on every response the tests get: each assertion names the checklist item it enforces.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

INDICATORS = {"info", "warning", "critical"}
TOKEN = re.compile(r"\{\{([^}]*)\}\}")
ALLOWED_TOKENS = {"context.userId", "context.patientId", "context.encounterId", "userPractitionerId",
                  "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}


def _absolute(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def no_empty(value, path="$"):
    """Item 31 / 5: no null, "", [], {} anywhere."""
    assert value is not None, f"{path} is null"
    if isinstance(value, str):
        assert value != "", f"{path} is an empty string"
    elif isinstance(value, list):
        assert value, f"{path} is an empty array"
        for i, v in enumerate(value):
            no_empty(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        assert value, f"{path} is an empty object"
        for k, v in value.items():
            no_empty(v, f"{path}.{k}")


def check_card(card: dict) -> None:
    no_empty(card, "card")                                                        # 31
    assert isinstance(card["summary"], str) and 1 <= len(card["summary"]) <= 139  # 30
    assert card["indicator"] in INDICATORS                                        # 30
    assert isinstance(card["source"]["label"], str) and card["source"]["label"]   # 30
    for key in ("url", "icon"):
        if key in card["source"]:
            assert _absolute(card["source"][key])                                 # 40
    if "detail" in card:
        assert isinstance(card["detail"], str) and card["detail"].strip()         # 32
        assert not re.search(r"<\s*/?\s*[a-zA-Z][^>]*>", card["detail"]), "raw HTML in detail"
    assert isinstance(card.get("uuid"), str) and card["uuid"]                     # 33
    if "suggestions" in card:
        assert card["selectionBehavior"] in ("at-most-one", "any")                # 34
        if card["selectionBehavior"] == "at-most-one":
            assert sum(bool(s.get("isRecommended")) for s in card["suggestions"]) <= 1
        for s in card["suggestions"]:
            assert s["label"] and s["uuid"]                                       # 35
            if "actions" in s:
                assert s["actions"]
                for a in s["actions"]:                                            # 36
                    assert a["type"] in ("create", "update", "delete") and a["description"]
                    if a["type"] in ("create", "update"):
                        assert a["resource"]["resourceType"]
                    else:
                        assert "/" in a["resourceId"] and "resource" not in a
    for r in card.get("overrideReasons", ()):                                     # 38
        assert r["code"] and r["system"] and r["display"]
    for link in card.get("links", ()):                                            # 39
        assert link["label"] and _absolute(link["url"]) and link["type"] in ("absolute", "smart")
        if link["type"] != "smart":
            assert "appContext" not in link


def check_response(body: dict) -> list[dict]:
    """Items 28-41 on a whole response; returns the cards."""
    assert isinstance(body, dict) and isinstance(body.get("cards"), list)         # 28
    if "systemActions" in body:                                                   # 29
        assert isinstance(body["systemActions"], list)
    assert "systemActions" not in body.get("extension", {})
    uuids = [c["uuid"] for c in body["cards"]]
    assert len(set(uuids)) == len(uuids)                                          # 33
    for card in body["cards"]:
        check_card(card)
    return body["cards"]


def check_prefetch_template(template: str) -> None:
    """Items 6-7: 2.0 tokens only; relative read or type-level search with restricted params."""
    for token in TOKEN.findall(template):
        assert token.strip() in ALLOWED_TOKENS, f"token {{{{{token}}}}} is not allowed in 2.0"
    assert "://" not in template and not template.startswith("/")
    resource, _, query = template.partition("?")
    assert re.fullmatch(r"[A-Z][A-Za-z]+(/\{\{[^}]+\}\})?", resource), template
    for param in filter(None, query.split("&")):
        name = param.split("=", 1)[0]
        assert ":" not in name or name.endswith(":in"), param
        assert name not in ("_include", "_revinclude", "_elements") and "." not in name, param
