"""A PACS in front of the real Orthanc that reads normally and answers every write (STOW-RS) with a set status.

Reads (QIDO-RS, WADO-RS) are forwarded as they are; a POST gets ``write_status`` and an empty body. A
real HTTP hop, not a stand-in object: the service talks to it exactly as to a PACS.
"""
from __future__ import annotations

import threading

import requests
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:
        pass


class WriteRefusingPacs:
    def __init__(self, upstream: str, write_status: int = 400):
        self.upstream, self.write_status = upstream.rstrip("/"), write_status
        self.writes = 0
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_Quiet)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @Request.application
    def _wsgi(self, request: Request) -> Response:
        if request.method != "GET":
            self.writes += 1
            return Response(b"", status=self.write_status)
        r = requests.get(self.upstream + request.full_path.rstrip("?"), headers={
            k: v for k, v in request.headers.items() if k.lower() in ("accept",)}, timeout=30)
        return Response(r.content, status=r.status_code, content_type=r.headers.get("Content-Type"))

    def close(self) -> None:
        self._server.shutdown()
