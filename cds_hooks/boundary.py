"""The HTTP boundary of the JSON endpoints, and the account of every rejected request.

Before a hook or feedback view runs (``before_request``): the body must be declared as JSON
(``application/json`` or ``application/*+json``, UTF-8; else 415) and at most
``CXR_CDS_MAX_REQUEST_BYTES`` long, whether it came with a ``Content-Length`` or chunked (else 413:
the stream is read to the limit and probed for one byte more). The app's JSON provider decodes
request bodies with :func:`cds_hooks.services.decode_json` (depth limit before parsing, strict
UTF-8, no lone surrogates), so ``request.get_json()`` raises a 400 naming the field.

:func:`rejected` is called by the app's error handlers: one log line per rejected request (status,
route, a stable reason code; for 401 the verifier's identifier-free reason) and
``cxr_cds_rejected_requests_total{status, reason}``. Request values never reach that line.
"""
from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, current_app, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge

from cds_hooks.errors import PayloadTooLarge, UnsupportedMediaType
from cds_hooks.redact import one_line
from cds_hooks.services import decode_json

log = logging.getLogger(__name__)

#: Views that read a JSON body.
JSON_ENDPOINTS = frozenset({"cds_hooks.call_service", "cds_hooks.feedback"})
#: Statuses counted and logged as rejections of the request.
REJECTED = frozenset({400, 401, 403, 404, 405, 409, 412, 413, 415})

_JSON_MEDIA_TYPE = re.compile(r"application/(?:[a-z0-9!#$&^_.\-]+\+)?json")


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, decoding with :func:`cds_hooks.services.decode_json` (responses unchanged)."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return decode_json(s)


def is_json_media_type(mimetype: str) -> bool:
    """``application/json`` or a ``+json`` structured syntax (``application/fhir+json``)."""
    return bool(_JSON_MEDIA_TYPE.fullmatch(mimetype.strip().lower()))


def check_json_request() -> None:
    """``before_request``: 415 for a body not declared as UTF-8 JSON, 413 for one over the size limit."""
    if request.method != "POST" or request.endpoint not in JSON_ENDPOINTS:
        return
    if not is_json_media_type(request.mimetype):
        shown = one_line(request.mimetype, 60) or "none"
        raise UnsupportedMediaType(f"Content-Type {shown} is not JSON; send the body as application/json")
    charset = request.mimetype_params.get("charset", "utf-8").strip().lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"Content-Type charset {one_line(charset, 40)} is not accepted; send "
                                   "application/json encoded as UTF-8")
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    try:
        data = request.get_data(cache=True)
        # a chunked body is cut at the limit by the stream: one byte more says it was longer
        if limit is not None and len(data) >= limit and request.stream.read(1):
            raise RequestEntityTooLarge()
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"413 Content Too Large: the request body is over CXR_CDS_MAX_REQUEST_BYTES={limit} "
                              "bytes") from None


def rejected(status: int, reason: str, detail: str | None = None) -> None:
    """Log one line and count one rejection (call from the error handlers; a no-op for other statuses).

    Parameters
    ----------
    status : int
        The HTTP status answered.
    reason : str
        A stable short code (the error's ``code``), the metric's ``reason`` label.
    detail : str, optional
        An identifier-free explanation (the 401 reason, the field named by a 400).
    """
    if status not in REJECTED:
        return
    where = request.url_rule.rule if request.url_rule is not None and status != 401 else one_line(request.path, 120)
    line = f"{status} on {where}: " + (one_line(detail) if detail else reason)
    if detail and status != 401:
        line = f"{status} on {where}: {reason} ({one_line(detail, 120)})"
    log.info("%s", line)
    state = current_app.extensions.get("cxr_cds")
    if state is not None:
        state.metrics.rejected.labels(str(status), reason).inc()


def init_app(app: Flask) -> None:
    """Install the strict JSON provider and the body checks on ``app``."""
    app.json = StrictJSONProvider(app)
    app.before_request(check_json_request)
