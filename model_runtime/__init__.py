"""CXR-LLAVA-v2 on stock transformers: loading, exact preprocessing and prompting, generation, worker.

Never imports the project's other packages: the model gets an 8-bit grayscale numpy array and a
prompt object with ``.system``, ``.user``, ``.id``, ``.version``.
"""
from model_runtime.backend import BACKENDS, HFBackend, ModelBackend, open_backend
from model_runtime.engine import Engine, PreparedBatch
from model_runtime.errors import (
    InferenceTimeout, InvalidRequest, ModelLoadError, ModelRuntimeError, OutOfMemory, QueueFull,
)
from model_runtime.errors import (
    BackendResponseError, BackendTimeout, BackendUnavailable, HiddenSizeMismatch, PayloadTooLarge,
)
from model_runtime.export import export_decoder
from model_runtime.loader import convert, load
from model_runtime.tiny import init_tiny
from model_runtime.types import (
    IMAGE_SENTINEL, GenerationRequest, GenerationResult, GenerationSettings, ModelConfig, ModelIdentity,
    PromptLike,
)
from model_runtime.worker import InferenceWorker

__all__ = [
    "ModelConfig", "load", "convert", "Engine", "PreparedBatch", "GenerationSettings", "GenerationRequest",
    "GenerationResult", "ModelIdentity", "PromptLike", "IMAGE_SENTINEL", "InferenceWorker", "init_tiny",
    "ModelRuntimeError", "ModelLoadError", "InvalidRequest", "QueueFull", "InferenceTimeout", "OutOfMemory",
    "ModelBackend", "HFBackend", "open_backend", "BACKENDS", "export_decoder",
    "BackendUnavailable", "BackendTimeout", "BackendResponseError", "HiddenSizeMismatch", "PayloadTooLarge",
]
