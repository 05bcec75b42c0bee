"""`cxr-cds worker`: an inference worker of a fleet (one model, one GPU) taking jobs from PostgreSQL.

No HTTP: it loads the model, claims jobs from the database (``CXR_CDS_DATABASE_URL``), runs the
pipeline and stores each analysis; SIGTERM (a rolling restart) stops claiming, lets running jobs
finish for ``--grace`` seconds and gives back the rest.
"""
from __future__ import annotations

import logging
import signal
import threading

import click

from cds_hooks.errors import SettingsError
from cds_hooks.settings import env_name, load_settings


@click.command()
@click.option("--concurrency", default=None, type=click.IntRange(1, 256),
              help="Jobs run at once (fills the model's micro-batches) [default: CXR_CDS_WORKER_CONCURRENCY].")
@click.option("--grace", "grace_s", default=30.0, show_default=True, type=float,
              help="Seconds running jobs may take to finish at shutdown before they are given back.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve this worker's Prometheus metrics (model latency and queue, analyses by outcome, jobs "
                   "waiting) on --metrics-host:PORT/metrics; default: none.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Interface of the metrics endpoint (keep it on a scrape network).")
def worker(concurrency: int | None, grace_s: float, metrics_port: int | None, metrics_host: str) -> None:
    """Run jobs from the fleet's database until SIGTERM or SIGINT."""
    try:
        settings = load_settings()
    except SettingsError as e:
        raise click.UsageError(str(e)) from None
    if settings.database_url is None:
        raise click.UsageError(f"`cxr-cds worker` needs {env_name('database_url')} (a PostgreSQL URL shared with "
                               "the API processes); the embedded default runs its jobs inside `cxr-cds serve`")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cds_hooks.metrics import Metrics
    from cds_hooks.runtime import build_runtime
    from cds_hooks.worker import JobRunner

    runtime = build_runtime(settings)
    metrics = Metrics()
    if runtime.queue_depth is not None:
        metrics.bind_queue_depth(runtime.queue_depth)
    metrics.bind_in_flight(runtime.store.active_jobs)
    metrics.bind_queued(runtime.store.queue_depth)
    runner = JobRunner(runtime.store, runtime, settings, metrics, concurrency=concurrency).start()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
        click.echo(f"metrics on http://{metrics_host}:{metrics_port}/metrics", err=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"worker {runner.worker_id} taking jobs", err=True)
    stop.wait()
    click.echo("stopping: running jobs finish or go back to the queue", err=True)
    runner.stop(grace_s=grace_s)
    if runtime.close is not None:
        runtime.close()
