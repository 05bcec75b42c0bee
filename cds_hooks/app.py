"""The Flask application factory: nothing is configured at import time.

``create_app(settings, runtime=...)`` wires ready parts (tests pass a tiny-model runtime); with no
runtime it builds one from the settings (archive client, model, worker, SQLite). Blueprints:
``cds_hooks.hooks`` (discovery, services, feedback), ``cds_hooks.studies`` (study arrival, drafts),
``cds_hooks.metrics`` (Prometheus), ``cds_hooks.review`` (the clinician's review page, HTML). Every
other error is JSON: an OperationOutcome, except 401, which
has no body at all.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from cds_hooks import boundary, redact
from cds_hooks.redact import one_line
from cds_hooks.errors import CdsHooksError, operation_outcome
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
    runner: Any = None               # the in-process JobRunner (embedded default); None in a fleet's API

    def base_url(self) -> str:
        """The public base URL (configured; else the one this request came in on)."""
        return self.settings.public_url or request.host_url.rstrip("/")

    def authenticate(self) -> dict | None:
        """Verify the bearer JWT for the invoked URL (no-op with ``CXR_CDS_AUTH=none``)."""
        if self.verifier is None:
            return None
        # the key set may have to be fetched: never for longer than what is left of the hook's budget,
        # counted from the request's arrival (a slow key host must not hold the answer past the deadline)
        wait_s = max(0.05, self.settings.deadline_s - (time.monotonic() - g.get("arrived", time.monotonic())))
        # a refusal is logged and counted once, by the error handler (boundary.rejected)
        return self.verifier.verify(request.headers.get("Authorization"), self.base_url() + request.path,
                                    wait_s=wait_s)

    def authenticate_pacs(self) -> dict | None:
        """``/studies/*``: the PACS shared secret when ``CXR_CDS_PACS_TOKEN`` is set, else as a hook.

        With the secret set, only it is accepted there (a JWT is not), and it is accepted nowhere else.
        """
        if self.settings.pacs_token is None:
            return self.authenticate()
        check_shared_secret(request.headers.get("Authorization"), self.settings.pacs_token)
        return None

    def close(self) -> None:
        """Stop background threads, the in-process job runner (its unfinished jobs go back to the queue)
        and the model worker."""
        self.analyzer.close()
        if self.verifier is not None:
            self.verifier.close()
        if self.runner is not None:
            self.runner.stop(grace_s=5.0)
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
    from cds_hooks import health, hooks, metrics_view, review, studies

    settings = settings or load_settings()
    if runtime is None:
        from cds_hooks.runtime import build_api_runtime

        # a fleet's API process holds no model (`cxr-cds worker` runs the jobs); embedded, this one does
        runtime = build_api_runtime(settings) if settings.database_url else build_runtime(settings)
    metrics = Metrics()
    if runtime.queue_depth is not None:
        metrics.bind_queue_depth(runtime.queue_depth)
    analyzer = Analyzer(runtime, settings, metrics)
    verifier = None
    if settings.auth == "jwt":
        verifier = JwtVerifier(settings.trusted_issuers, algorithms=settings.jwt_algorithms,
                               leeway_s=settings.jwt_leeway_s,
                               # fetches run beside requests (a request waits at most its remaining
                               # budget), so a slow key host may take longer than any one hook waits
                               jwks=JwksCache(ttl_s=settings.jwks_ttl_s, refresh_min_s=settings.jwks_refresh_min_s,
                                              timeout_s=10.0),
                               remember_jti=runtime.store.remember_jti,
                               max_lifetime_s=settings.jwt_max_lifetime_s)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    @app.before_request
    def arrived() -> None:
        g.arrived = time.monotonic()     # the hook's time budget counts from here (authentication included)

    boundary.init_app(app)              # strict JSON bodies: 415, 413 (chunked too), depth, UTF-8
    app.json.sort_keys = False
    if settings.log_key:
        redact.set_log_key(settings.log_key)
    redact.install_log_redaction()
    runner = None
    if runtime.generate is not None:
        # the embedded default: this process also runs the jobs (a fleet's API processes hold no model)
        from cds_hooks.worker import JobRunner

        runner = JobRunner(runtime.store, runtime, settings, metrics, on_done=analyzer.notify,
                           wake=analyzer.wake).start()
    app.extensions["cxr_cds"] = State(settings, runtime, analyzer, metrics, verifier, runner)
    app.register_blueprint(hooks.bp)
    app.register_blueprint(studies.bp)
    app.register_blueprint(metrics_view.bp)
    app.register_blueprint(health.bp)
    review.init_app(app, settings, runtime.store)     # the review page (signed links) and its store

    @app.errorhandler(CdsHooksError)
    def service_error(e: CdsHooksError):
        boundary.rejected(e.status, e.code, e.message if e.status == 401 else getattr(e, "field", None))
        if e.status == 401:
            return Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        response = jsonify(operation_outcome(e.message, issue_code=e.issue_code))
        response.status_code = e.status
        if e.status == 503:
            response.headers["Retry-After"] = str(getattr(e, "retry_after_s", 5))
            log.error("503 on %s: %s", request.path, e.message)
        return response

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        boundary.rejected(e.code or 500, (e.name or "http").lower().replace(" ", "-"))
        body = operation_outcome(f"{e.code} {e.name}: {e.description}", issue_code=_HTTP_ISSUE.get(e.code, "processing"))
        response = jsonify(body)
        response.status_code = e.code or 500
        if e.code == 405 and e.valid_methods:
            response.headers["Allow"] = ", ".join(e.valid_methods)
        return response

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        # the type and the frames, not the message: a message may quote request data (an MRN, a name)
        log.error("unhandled error on %s %s: %s (message withheld: it may quote request data)\n%s",
                  request.method, one_line(request.path, 120), type(e).__name__, redact.frames(e))
        return jsonify(operation_outcome("internal error; the service has logged it")), 500

    @app.after_request
    def cors(response: Response) -> Response:
        # on every response, errors included: a browser hides a status that lacks these headers
        # (a private-network grant, too, only for a listed origin: security.cors_headers)
        response.headers.update(cors_headers(request.headers.get("Origin"), settings.cors_origins,
                                             private_network=request.headers.get(
                                                 "Access-Control-Request-Private-Network") == "true"))
        return response

    analyzer.start_polling()
    return app
