"""`cxr-cds serve`: the service under gunicorn (one worker process that owns the model; threads)."""
from __future__ import annotations

import logging

import click

from cds_hooks.errors import SettingsError
from cds_hooks.settings import load_settings


def _application(host: str, port: int, threads: int, timeout_s: int, settings):
    """A gunicorn application that builds the app inside its single worker process."""
    from gunicorn.app.base import BaseApplication

    class CdsApplication(BaseApplication):
        def load_config(self) -> None:
            # One worker: the model lives in that process; threads give concurrency around it.
            # preload off: the model and the inference thread are created after the fork.
            for key, value in {"bind": f"{host}:{port}", "workers": 1, "worker_class": "gthread",
                               "threads": threads, "timeout": timeout_s, "graceful_timeout": 10,
                               "preload_app": False, "accesslog": None}.items():
                self.cfg.set(key, value)

        def load(self):
            from cds_hooks.app import create_app
            return create_app(settings)

    return CdsApplication()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Request threads in the worker process.")
@click.option("--timeout", "timeout_s", default=120, show_default=True, type=int,
              help="Seconds before gunicorn restarts a silent worker (model loading counts).")
def serve(host: str, port: int, threads: int, timeout_s: int) -> None:
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _application(host, port, threads, timeout_s, settings).run()
