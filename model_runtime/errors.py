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


class BackendUnavailable(ModelRuntimeError):
    """A model server (the ``vllm`` backend's) cannot be reached: refused, reset or unresolvable. Retryable."""

    code = "backend_unavailable"
    http_status = 503
    retryable = True


class BackendTimeout(InferenceTimeout):
    """A model server accepted the request but did not answer within the configured timeout. Retryable."""

    code = "backend_timeout"
    http_status = 504
    retryable = True


class BackendResponseError(ModelRuntimeError):
    """A model server answered with an HTTP error (``.status``) or a body that is not a completion.

    5xx answers are retryable (``.retryable``); 4xx answers mean this request or the configuration is wrong.
    """

    code = "backend_error"
    http_status = 502

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
        self.retryable = status is None or status >= 500


class HiddenSizeMismatch(BackendResponseError):
    """The served decoder's hidden size differs from the encoder's: the server serves another model."""

    code = "hidden_size_mismatch"
    http_status = 503

    def __init__(self, message: str, status: int | None = None, *, ours: int | None = None,
                 served: int | None = None):
        super().__init__(message, status)
        self.ours, self.served = ours, served
        self.retryable = False


class PayloadTooLarge(ModelRuntimeError):
    """A request's serialized embeddings exceed the configured payload limit."""

    code = "payload_too_large"
    http_status = 500
