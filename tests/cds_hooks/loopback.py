"""Small HTTP servers on 127.0.0.1 for tests: a fake EHR FHIR endpoint and a JWKS endpoint.

Hand-written collaborators (not mocks of the service under test): they record what they were
asked, so tests can assert "no outbound call" or "the bearer token was sent".
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:   # the fake EHR's access log is not the service's log
        pass


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    authorization: str | None


@dataclass
class LoopbackServer:
    """Serves ``routes``: path (+ '?' + query, or path alone) -> (status, JSON body[, delay_s])."""

    routes: dict = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self):
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @Request.application
    def _wsgi(self, request: Request) -> Response:
        self.requests.append(Recorded(request.method, request.path, request.query_string.decode(),
                                      request.headers.get("Authorization")))
        key = request.path + ("?" + request.query_string.decode() if request.query_string else "")
        route = self.routes.get(key) or self.routes.get(request.path)
        if route is None:
            return Response(json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "not-found"}]}), status=404, mimetype="application/fhir+json")
        status, body, *rest = route
        if rest:
            time.sleep(rest[0])
        return Response(json.dumps(body), status=status, mimetype="application/json")

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)
