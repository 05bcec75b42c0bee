"""The Flask application factory: nothing is configured at import time.

``create_app(settings, runtime=...)`` wires ready parts (tests pass a tiny-model runtime); with no
runtime it builds one from the settings (archive client, model, worker, SQLite). Blueprints:
``cds_hooks.hooks`` (discovery, services, feedback), ``cds_hooks.studies`` (study arrival, drafts),
``cds_hooks.metrics`` (Prometheus). Every error is JSON: an OperationOutcome, except 401, which
has no body at all.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from cds_hooks.errors import CdsHooksError, Unauthorized, operation_outcome
from cds_hooks.jobs import Analyzer
from cds_hooks.metrics import Metrics
from cds_hooks.runtime import Runtime, build_runtime
from cds_hooks.security import JwksCache, JwtVerifier, check_shared_secret, cors_headers
from cds_hooks.settings import Settings, load_settings

log = logging.getLogger(__name__)

_HTTP_ISSUE = {400: "invalid", 404: "not-found", 405: "not-supported", 413: "too-costly", 415: "invalid"}


@dataclass
class State:
    """What the views share: ``app.extensions["cxr_cds"]``."""

    settings: Settings
    runtime: Runtime
    analyzer: Analyzer
    metrics: Metrics
    verifier: JwtVerifier | None

    def base_url(self) -> str:
        """The public base URL (configured; else the one this request came in on)."""
        return self.settings.public_url or request.host_url.rstrip("/")

    def authenticate(self) -> dict | None:
        """Verify the bearer JWT for the invoked URL (no-op with ``CXR_CDS_AUTH=none``)."""
        if self.verifier is None:
            return None
        try:
            return self.verifier.verify(request.headers.get("Authorization"), self.base_url() + request.path)
        except Unauthorized as e:
            log.info("401 on %s: %s", request.path, e.message)
            raise

    def authenticate_pacs(self) -> dict | None:
        """``/studies/*``: the PACS shared secret when ``CXR_CDS_PACS_TOKEN`` is set, else as a hook.

        With the secret set, only it is accepted there (a JWT is not), and it is accepted nowhere else.
        """
        if self.settings.pacs_token is None:
            return self.authenticate()
        try:
            check_shared_secret(request.headers.get("Authorization"), self.settings.pacs_token)
        except Unauthorized as e:
            log.info("401 on %s: %s", request.path, e.message)
            raise
        return None

    def close(self) -> None:
        """Stop background threads and the model worker."""
        self.analyzer.close()
        if self.runtime.close is not None:
            self.runtime.close()


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Flask:
    """Build the service.

    Parameters
    ----------
    settings : Settings, optional
        Default: :func:`cds_hooks.settings.load_settings` (``CXR_CDS_*`` environment variables).
    runtime : Runtime, optional
        Ready image source, generate callable and store; default: ``build_runtime(settings)``.

    Returns
    -------
    flask.Flask
        ``app.extensions["cxr_cds"]`` is the :class:`State`; call its ``close()`` when done.
    """
    from cds_hooks import hooks, metrics as metrics_module, studies

    settings = settings or load_settings()
    runtime = runtime or build_runtime(settings)
    metrics = Metrics()
    if runtime.queue_depth is not None:
        metrics.bind_queue_depth(runtime.queue_depth)
    analyzer = Analyzer(runtime, settings, metrics)
    verifier = None
    if settings.auth == "jwt":
        verifier = JwtVerifier(settings.trusted_issuers, algorithms=settings.jwt_algorithms,
                               leeway_s=settings.jwt_leeway_s,
                               jwks=JwksCache(ttl_s=settings.jwks_ttl_s, refresh_min_s=settings.jwks_refresh_min_s),
                               remember_jti=runtime.store.remember_jti)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    app.extensions["cxr_cds"] = State(settings, runtime, analyzer, metrics, verifier)
    app.register_blueprint(hooks.bp)
    app.register_blueprint(studies.bp)
    app.register_blueprint(metrics_module.bp)

    @app.errorhandler(CdsHooksError)
    def service_error(e: CdsHooksError):
        if e.status == 401:
            return Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        return jsonify(operation_outcome(e.message, issue_code=e.issue_code)), e.status

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        body = operation_outcome(f"{e.code} {e.name}: {e.description}", issue_code=_HTTP_ISSUE.get(e.code, "processing"))
        response = jsonify(body)
        response.status_code = e.code or 500
        if e.code == 405 and e.valid_methods:
            response.headers["Allow"] = ", ".join(e.valid_methods)
        return response

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(operation_outcome("internal error; the service has logged it")), 500

    @app.after_request
    def cors(response: Response) -> Response:
        # on every response, errors included: a browser hides a status that lacks these headers
        response.headers.update(cors_headers(request.headers.get("Origin"), settings.cors_origins))
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            response.headers["Access-Control-Allow-Private-Network"] = "true"
        return response

    analyzer.start_polling()
    return app
