"""Following a card's review link in tests: the page, the stored draft JSON it unlocks, what it points at."""
from __future__ import annotations

from urllib.parse import urlsplit


def review_path(card: dict) -> str:
    """The review link's path and query (``/review/<analysis id>?token=...``), for a test client."""
    (link,) = card["links"]
    parts = urlsplit(link["url"])
    assert parts.path.startswith("/review/") and parts.query.startswith("token="), link
    return f"{parts.path}?{parts.query}"


def link_target(card: dict) -> str:
    """The analysis a card's review link names (``/review/<analysis id>``), without its per-card token."""
    return review_path(card).split("?", 1)[0]


def review_page(client, card: dict) -> str:
    """The review page's HTML (asserting 200)."""
    r = client.get(review_path(card))
    assert r.status_code == 200, r.status_code
    return r.get_data(as_text=True)


def draft_json(client, card: dict) -> dict:
    """The stored draft (``GET /drafts/<id>?token=...``) with the card's review-link token as credential."""
    r = client.get(review_path(card).replace("/review/", "/drafts/", 1))
    assert r.status_code == 200, r.status_code
    return r.get_json()
