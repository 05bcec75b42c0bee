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
        ``name``, ``revision``, ``dtype``, ``quantization`` of the loaded model (part of analysis keys).
    store : Store
        SQLite storage.
    queue_depth : callable, optional
        Requests waiting for the model (``InferenceWorker.queue_depth``), for metrics.
    close : callable, optional
        Stops what the factory started (the inference worker).
    """

    source: Any
    generate: Callable[[Any], Any]
    model_identity: dict
    store: Store
    queue_depth: Callable[[], int] | None = None
    close: Callable[[], None] | None = None


def identity_dict(identity: Any) -> dict:
    """``ModelIdentity`` (a dataclass) or a mapping -> a plain dict."""
    if dataclasses.is_dataclass(identity):
        return dataclasses.asdict(identity)
    return dict(identity)


def build_source(settings: Settings) -> Any:
    """The image source: DICOMweb when ``CXR_CDS_DICOMWEB_URL`` is set, else the local folder."""
    from imaging import DicomWebSource, FolderSource

    if settings.dicomweb_url:
        return DicomWebSource.from_url(settings.dicomweb_url, username=settings.dicomweb_username,
                                       password=settings.dicomweb_password)
    if settings.dicom_folder is None:
        raise SettingsError(f"no image source: set {env_name('dicomweb_url')} (a DICOMweb base URL) or "
                            f"{env_name('dicom_folder')} (a folder of .dcm files)")
    return FolderSource(settings.dicom_folder)


def build_runtime(settings: Settings) -> Runtime:
    """Open the image source, load the model, start its worker and open the store.

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
    from model_runtime import InferenceWorker, ModelConfig, load

    if not settings.model:
        raise SettingsError(f"{env_name('model')} is not set; give a checkpoint directory or a hub id "
                            "(for a demo: `cxr-cds model init-tiny DIR` and point it there)")
    source = build_source(settings)
    engine = load(ModelConfig(model=settings.model, revision=settings.model_revision,
                              device=settings.device, quantization=settings.quantization))
    worker = InferenceWorker(engine)
    worker.start()
    log.info("model %s loaded; inference worker started", settings.model)
    return Runtime(source=source, generate=worker.run, model_identity=identity_dict(engine.identity),
                   store=Store(settings.db), queue_depth=lambda: worker.queue_depth, close=worker.stop)
