"""The model runtime's errors: one root, each with an HTTP status and a stable short code."""
from __future__ import annotations


class ModelRuntimeError(Exception):
    """Root of every error raised by `model_runtime`."""

    code = "model_error"
    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ModelLoadError(ModelRuntimeError):
    """The checkpoint cannot be found, read or mapped onto the native model."""

    code = "model_load_failed"
    http_status = 503


class InvalidRequest(ModelRuntimeError, ValueError):
    """A generation request is malformed: wrong image dtype/shape, prompt without `<image>`, bad setting."""

    code = "invalid_request"
    http_status = 400


class QueueFull(ModelRuntimeError):
    """The inference worker's queue is at its bound; try again later."""

    code = "queue_full"
    http_status = 503


class InferenceTimeout(ModelRuntimeError):
    """A request was not finished within its deadline."""

    code = "inference_timeout"
    http_status = 504


class OutOfMemory(ModelRuntimeError):
    """The accelerator ran out of memory even at batch size 1."""

    code = "out_of_memory"
    http_status = 503
