"""`cxr-cds serve`: the service under gunicorn.

Embedded default (no ``CXR_CDS_DATABASE_URL``): one worker process that owns the model and runs the
jobs in-process, threads for concurrency. A fleet (``CXR_CDS_DATABASE_URL=postgresql://...``): API
processes only (``--workers`` of them, holding no model), any number of instances on any number of
machines; ``cxr-cds worker`` processes run the jobs. Prometheus metrics add up across the worker
processes (multiprocess mode in a per-instance directory); each instance has its own gunicorn control
socket (or none).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile

import click

from cds_hooks.errors import SettingsError
from cds_hooks.settings import load_settings


def _application(host: str, port: int, workers: int, threads: int, timeout_s: int, settings, control_socket):
    """A gunicorn application that builds the app inside each worker process (after the fork)."""
    from gunicorn.app.base import BaseApplication

    class CdsApplication(BaseApplication):
        def load_config(self) -> None:
            # preload off: the model, the store's connections and the job runner are made after the fork
            config = {"bind": f"{host}:{port}", "workers": workers, "worker_class": "gthread",
                      "threads": threads, "timeout": timeout_s, "graceful_timeout": 30,
                      "preload_app": False, "accesslog": None, "child_exit": _child_exit,
                      "worker_exit": _worker_exit}
            if control_socket:
                config["control_socket"] = control_socket
            else:
                config["control_socket_disable"] = True
            for key, value in config.items():
                self.cfg.set(key, value)

        def load(self):
            from cds_hooks.app import create_app
            return create_app(settings)

    return CdsApplication()


def _worker_exit(server, worker) -> None:
    """A gunicorn worker stops (SIGTERM, rolling restart): its running jobs finish or go back to the queue."""
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("cxr_cds") if app is not None else None
    if state is not None:
        state.close()


def _child_exit(server, worker) -> None:
    """A gunicorn worker ended: its multiprocess metric files are marked dead (gauges stop counting it)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="API processes (a fleet only; the embedded default runs one, which holds the model) "
                   "[default: 2 with CXR_CDS_DATABASE_URL, else 1].")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Request threads per worker process.")
@click.option("--timeout", "timeout_s", default=120, show_default=True, type=int,
              help="Seconds before gunicorn restarts a silent worker (model loading counts).")
@click.option("--control-socket", default=None, type=click.Path(dir_okay=False),
              help="gunicorn control socket of this instance (default: none, so instances never share one).")
def serve(host: str, port: int, workers: int | None, threads: int, timeout_s: int, control_socket) -> None:
    """Serve the CDS Hooks service (settings from CXR_CDS_* environment variables).

    Production: CXR_CDS_AUTH=jwt with CXR_CDS_TRUSTED_ISSUERS, behind TLS termination, with
    CXR_CDS_PUBLIC_URL set to the https base URL the EHR calls (JWT `aud` is checked against it).
    """
    try:
        settings = load_settings()
    except SettingsError as e:
        raise click.UsageError(str(e)) from None
    if settings.auth == "none":
        click.echo("warning: CXR_CDS_AUTH=none: no JWT checks (development only)", err=True)
    fleet = settings.database_url is not None
    if workers is None:
        workers = 2 if fleet else 1
    if workers > 1 and not fleet:
        raise click.UsageError("--workers > 1 needs CXR_CDS_DATABASE_URL (a fleet: API processes hold no model "
                               "and `cxr-cds worker` runs the jobs); the embedded default runs one process")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # one directory per instance, emptied at start: /metrics sums this instance's processes
        metrics_dir = tempfile.mkdtemp(prefix="cxr-cds-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _application(host, port, workers, threads, timeout_s, settings, control_socket).run()
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
