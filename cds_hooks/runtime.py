"""The service's runtime parts (image source, model, store), built from settings by one factory.

``build_runtime(settings)`` does the I/O (opens the archive client, loads the weights, starts the
inference worker, opens SQLite); ``Runtime`` only holds ready parts, so tests hand ``create_app``
a runtime with a tiny-model engine and an Orthanc- or folder-backed source.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable

from cds_hooks.errors import SettingsError
from cds_hooks.settings import Settings, env_name
from cds_hooks.store import Store

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Ready collaborators of the app.

    Attributes
    ----------
    source : imaging.ImageSource
        Where studies are found and fetched (DICOMweb or a local folder).
    generate : callable
        ``GenerationRequest -> GenerationResult`` (``InferenceWorker.run`` or a lambda over an engine).
    model_identity : dict
        ``name``, ``revision``, ``dtype``, ``quantization``, ``kernel``, ``decode`` of the loaded model
        (part of analysis keys).
    store : Store
        SQLite storage.
    queue_depth : callable, optional
        Requests waiting for the model (``InferenceWorker.queue_depth``), for metrics.
    close : callable, optional
        Stops what the factory started (the inference worker).
    score : callable, optional
        ``(image (H, W) uint8, prompts) -> list[float]``: P("Yes") vs "No" per yes/no question
        (``InferenceWorker.score``, so scoring shares the worker thread with generation). None: no
        per-finding scores (``CXR_CDS_SCORES=false``).

    Notes
    -----
    Scores are part of the stored analysis, not of its key: the analysis key (instance, model,
    prompt version, context) is the same with scores on or off, because scoring is deterministic
    (no sampling) and does not change the generated report or its findings. Turning scores on therefore does not
    recompute analyses already stored; those are shown without probabilities, and analyses made
    from then on carry them.
    """

    source: Any
    generate: Callable[[Any], Any] | None      # None: an API process of a fleet (no model here)
    model_identity: dict
    store: Store
    queue_depth: Callable[[], int] | None = None
    close: Callable[[], None] | None = None
    score: Callable[..., Any] | None = None


def identity_dict(identity: Any) -> dict:
    """``ModelIdentity`` (a dataclass) or a mapping -> a plain dict."""
    if dataclasses.is_dataclass(identity):
        return dataclasses.asdict(identity)
    return dict(identity)


def build_source(settings: Settings) -> Any:
    """The image source: DICOMweb when ``CXR_CDS_DICOMWEB_URL`` is set, else the local folder.

    The DICOMweb source gets the PACS credentials (basic or bearer), ``dicomweb_timeout_s`` and
    ``dicomweb_retries``; both sources get ``max_bytes``. ``max_pixels`` and ``decode_min_short_edge`` are not properties of a source:
    the caller passes them to ``imaging.fetch_radiograph(..., max_pixels=settings.max_pixels,
    min_short_edge=settings.decode_min_short_edge or None)``.

    Raises
    ------
    SettingsError
        No source configured, or contradictory PACS credentials (named by variable, never by value).
    """
    from imaging import DicomWebSource, FolderSource

    if settings.dicomweb_url:
        names = {"username": env_name("dicomweb_username"), "password": env_name("dicomweb_password"),
                 "bearer": env_name("dicomweb_bearer_token")}
        if settings.dicomweb_bearer_token and (settings.dicomweb_username or settings.dicomweb_password):
            raise SettingsError(f"set either {names['username']}/{names['password']} or {names['bearer']} "
                                "for the PACS, not both")
        if (settings.dicomweb_username is None) != (settings.dicomweb_password is None):
            raise SettingsError(f"PACS basic authentication needs both {names['username']} and "
                                f"{names['password']}; set both or neither")
        return DicomWebSource.from_url(settings.dicomweb_url, username=settings.dicomweb_username,
                                       password=settings.dicomweb_password,
                                       bearer_token=settings.dicomweb_bearer_token,
                                       timeout_s=settings.dicomweb_timeout_s, retries=settings.dicomweb_retries,
                                       max_bytes=settings.max_bytes)
    if settings.dicom_folder is None:
        raise SettingsError(f"no image source: set {env_name('dicomweb_url')} (a DICOMweb base URL) or "
                            f"{env_name('dicom_folder')} (a folder of .dcm files)")
    return FolderSource(settings.dicom_folder, max_bytes=settings.max_bytes)


def spec_identity(settings: Settings) -> dict:
    """The model as a fleet's settings name it (every API process and worker reads the same settings).

    A fleet's API processes load no model, so analysis keys there are made from this; the stored
    analysis (its FHIR Device, the card's model line) records the worker's actual identity. Pin
    ``CXR_CDS_MODEL_REVISION`` and ``CXR_CDS_QUANTIZATION`` in a fleet so that one key means one model.
    """
    return {"name": settings.model, "revision": settings.model_revision or "unpinned",
            "quantization": settings.quantization or "auto", "dtype": "auto",
            "decode": settings.decode if settings.backend == "hf" else f"vllm:{settings.vllm_url}"}


def build_store(settings: Settings) -> Store:
    """PostgreSQL when ``CXR_CDS_DATABASE_URL`` is set (a fleet), else the SQLite file ``CXR_CDS_DB``."""
    return Store(settings.database_url or settings.db)


def build_api_runtime(settings: Settings) -> Runtime:
    """A fleet's API process: the PACS client and the store, no model (``cxr-cds worker`` runs the jobs)."""
    if not settings.model:
        raise SettingsError(f"{env_name('model')} is not set; the API names the model its workers run "
                            "(analysis keys and stored drafts depend on it)")
    return Runtime(source=build_source(settings), generate=None, model_identity=spec_identity(settings),
                   store=build_store(settings))


def build_runtime(settings: Settings) -> Runtime:
    """Open the image source, load the model, start its worker and open the store.

    The worker serves both generation (``Runtime.generate``) and, when ``settings.scores``, the
    per-finding yes/no scores (``Runtime.score``).

    Parameters
    ----------
    settings : Settings

    Returns
    -------
    Runtime

    Raises
    ------
    SettingsError
        No model or no image source is configured.
    model_runtime.ModelLoadError
        The weights could not be loaded.
    """
    from model_runtime import HFBackend, InferenceWorker, ModelConfig, open_backend

    if not settings.model:
        raise SettingsError(f"{env_name('model')} is not set; give a checkpoint directory or a hub id "
                            "(for a demo: `cxr-cds model init-tiny DIR` and point it there)")
    source = build_source(settings)
    # hf: the in-process engine; vllm: our encoder + the decoder on CXR_CDS_VLLM_URL (model_runtime.backend)
    engine = open_backend(settings.backend, ModelConfig(model=settings.model, revision=settings.model_revision,
                                                        device=settings.device, quantization=settings.quantization,
                                                        decode=settings.decode),
                          vllm_url=settings.vllm_url, timeout_s=settings.vllm_timeout_s,
                          max_payload_bytes=settings.vllm_max_payload_bytes)
    # vLLM batches continuously: hand it larger micro-batches (sent as concurrent requests)
    worker = InferenceWorker(engine, max_batch=8 if settings.backend == "hf" else 32)
    if isinstance(engine, HFBackend):
        # a compiled decode compiles each batch shape once: do it now, not on the first clinician's request
        engine.engine.warm_up(range(1, worker.max_batch + 1))
    worker.start()
    log.info("model %s loaded; inference worker started", settings.model)
    # in a fleet, keys come from the settings (API processes hold no model); embedded, from the model itself
    identity = spec_identity(settings) if settings.database_url else identity_dict(engine.identity)
    return Runtime(source=source, generate=worker.run, model_identity=identity,
                   store=build_store(settings), queue_depth=lambda: worker.queue_depth,
                   close=lambda: (worker.stop(), engine.close()),
                   score=worker.score if settings.scores else None)
