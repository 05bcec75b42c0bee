"""The ``vllm`` backend: our encoder, a stock vLLM OpenAI server as the decoder.

The whole path, top to bottom: validate -> the engine's own ``prepare`` (the same prompt ids as the
``hf`` backend: double BOS, per-chunk tokenisation around ``<image>``, the image tokens from the vision
tower + projector LayerNorm + projector, spliced between the decoder's token embeddings) -> each row's
(L, H) embeddings serialised with ``torch.save`` and base64 (as vLLM's own prompt-embeds client example)
-> ``POST /v1/completions`` with ``prompt_embeds`` to a server started with ``--enable-prompt-embeds``,
one request per row, concurrently (the server batches them continuously) -> token ids -> our tokenizer's
text. Greedy at ``temperature <= 0.001`` (sent as 0), EOS as a stop token, and the token cap of the
``hf`` backend (``min(512, 2048 - prompt_length - 1)``, lowered by the settings and by the server's
``max_model_len``). Yes/no scores: a one-token request per question with the log-probabilities of the
``▁Yes`` and ``▁No`` ids (vLLM's ``logprob_token_ids``; raw log-probabilities, before any sampling
processing), normalised over the pair exactly as ``Engine.score_yes_no``.

No vLLM code runs in our process: only HTTP (``requests``, with a session handed in).
"""
from __future__ import annotations

import base64
import dataclasses
import io
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import torch

from model_runtime.chat import check_prompt
from model_runtime.errors import (
    BackendResponseError, BackendTimeout, BackendUnavailable, HiddenSizeMismatch, InvalidRequest, PayloadTooLarge,
)
from model_runtime.preprocess import check_image
from model_runtime.types import GenerationRequest, GenerationResult, ModelConfig, ModelIdentity, PromptLike

log = logging.getLogger(__name__)

GREEDY_BELOW = 0.001           # GenerationSettings.greedy's threshold: sent to vLLM as temperature 0
CONNECT_TIMEOUT_S = 10.0       # TCP connect (the read timeout is the configured one)


class VllmBackend:
    """CXR-LLAVA with the decoder served by vLLM. Build it with `open_vllm` (or ``open_backend("vllm", ...)``).

    Parameters
    ----------
    encoder : Engine
        A loaded engine of the same published checkpoint whose decoder the server serves; only its
        ``prepare`` (vision tower, projector, token embeddings), tokenizer and caps are used.
    session : requests.Session
    url : str
        The server's base URL (no trailing ``/v1``).
    served_model : str
        The model id the server serves (``GET /v1/models``).
    vllm_version : str
        ``GET /version`` of the server.
    max_model_len : int
        The server's context length (prompt + generated tokens).
    timeout_s : float
        Read timeout of each request (a whole completion); `BackendTimeout` after it.
    max_payload_bytes : int
        Largest request body; larger raises `PayloadTooLarge` before anything is sent.
    max_concurrency : int
        Requests in flight at most.
    owns_session : bool
        `close` closes the session too.
    """

    kind = "vllm"

    def __init__(self, encoder, session, url: str, *, served_model: str, vllm_version: str, max_model_len: int,
                 timeout_s: float = 120.0, max_payload_bytes: int = 256 << 20, max_concurrency: int = 64,
                 owns_session: bool = False):
        if timeout_s <= 0 or max_payload_bytes <= 0 or max_concurrency < 1:
            raise InvalidRequest(f"timeout_s and max_payload_bytes must be > 0 and max_concurrency >= 1, got "
                                 f"{timeout_s}, {max_payload_bytes}, {max_concurrency}")
        self.encoder = encoder
        self.session = session
        self.url = url.rstrip("/")
        self.served_model = served_model
        self.vllm_version = vllm_version
        self.max_model_len = int(max_model_len)
        self.timeout_s = float(timeout_s)
        self.max_payload_bytes = int(max_payload_bytes)
        self.tokenizer = encoder.tokenizer
        self.eos_token_id = encoder.eos_token_id
        self.hidden_size = int(encoder.model.get_input_embeddings().weight.shape[1])
        ours = encoder.identity
        self._identity = ModelIdentity(name=ours.name, revision=ours.revision, dtype=ours.dtype, quantization="none",
                                       kernel=f"vllm-{vllm_version}", decode=f"vllm:{served_model}")
        self._owns_session = owns_session
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="cxr-vllm")
        self._lock = threading.Lock()  # one encoder pass at a time on the device

    @property
    def identity(self) -> ModelIdentity:
        """The checkpoint's name and revision; ``kernel`` ``vllm-<version>``, ``decode`` ``vllm:<served model>``."""
        return self._identity

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> "VllmBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- inputs -----------------------------------------------------------------------------------
    def validate(self, request: GenerationRequest) -> None:
        """Raise InvalidRequest for a request the model cannot take (the engine's checks)."""
        self.encoder.validate(request)

    def _embed(self, images: Sequence[np.ndarray], prompts: Sequence[PromptLike]):
        """The engine's left-padded batch -> per row (L_i, H) CPU tensors, ids and lengths, timings."""
        with self._lock:
            batch = self.encoder.prepare(images, prompts)
        width = batch.inputs_embeds.shape[1]
        # clone: torch.save of a view would write the whole batch's storage
        rows = [batch.inputs_embeds[i, width - n:].detach().to("cpu").clone()
                for i, n in enumerate(batch.prompt_lengths)]
        return rows, batch

    def _cap(self, prompt_length: int, settings) -> int:
        cap = self.encoder.max_new_tokens(prompt_length, settings)
        room = self.max_model_len - prompt_length
        if room < 1:
            raise InvalidRequest(f"the prompt is {prompt_length} tokens (image included) and the vLLM server's "
                                 f"max_model_len is {self.max_model_len}: restart it with a larger --max-model-len")
        return min(cap, room)

    def _encode(self, rows: torch.Tensor) -> str:
        buf = io.BytesIO()
        torch.save(rows, buf)  # (L, H) in the model dtype; the server casts to its --dtype
        text = base64.b64encode(buf.getvalue()).decode("ascii")
        if len(text) > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"the prompt embeddings of {rows.shape[0]} positions x {rows.shape[1]} ({rows.dtype}) take "
                f"{len(text)} bytes in base64, over the limit of {self.max_payload_bytes}; raise "
                "CXR_CDS_VLLM_MAX_PAYLOAD_BYTES (and the server's request size limit, if a proxy sets one)")
        return text

    # -- generation -------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate for a batch of requests: one concurrent completion request per row.

        Parameters
        ----------
        requests : sequence of GenerationRequest

        Returns
        -------
        list of GenerationResult, in request order. Timings in ms: ``preprocess_ms``, ``prefill_ms``
        (our encoder: vision tower + splice), ``decode_ms`` (the server's answer: its prefill and decode,
        and the transfer), ``queue_ms`` (0 here; the worker sets it).

        Raises
        ------
        InvalidRequest
            A bad image or prompt, or a prompt too long for the cap or the server's max_model_len.
        PayloadTooLarge, BackendUnavailable, BackendTimeout, BackendResponseError, HiddenSizeMismatch
        """
        requests = list(requests)
        if not requests:
            return []
        for r in requests:
            self.validate(r)
        rows, batch = self._embed([r.image for r in requests], [r.prompt for r in requests])
        caps = [self._cap(n, r.settings) for n, r in zip(batch.prompt_lengths, requests)]
        bodies = [self._generation_body(self._encode(row), r.settings, cap)
                  for row, r, cap in zip(rows, requests, caps)]
        answers = self._post_all(bodies)
        results = []
        for i, (r, (answer, ms)) in enumerate(zip(requests, answers)):
            tokens, finish = self._tokens(answer, r.settings.ignore_eos)
            results.append(GenerationResult(
                text=self.tokenizer.decode(tokens),
                token_ids=tuple(tokens),
                prompt_token_ids=tuple(batch.prompt_ids[i]),
                timings={"queue_ms": 0.0, "preprocess_ms": batch.preprocess_ms, "prefill_ms": batch.features_ms,
                         "decode_ms": ms},
                prompt_tokens=batch.prompt_lengths[i],
                new_tokens=len(tokens),
                model=self._identity.for_prompt(r.prompt),
                finish_reason=finish,
            ))
        return results

    def _generation_body(self, embeds: str, settings, cap: int) -> dict[str, Any]:
        greedy = settings.temperature <= GREEDY_BELOW
        body: dict[str, Any] = {
            "model": self.served_model,
            "prompt_embeds": embeds,
            "max_tokens": cap,
            "temperature": 0.0 if greedy else settings.temperature,
            "top_p": 1.0 if greedy else settings.top_p,
            "top_k": 0 if greedy else settings.top_k,     # vLLM: 0 disables, as ours
            "ignore_eos": bool(settings.ignore_eos),
            "return_token_ids": True,
            "skip_special_tokens": True,
        }
        if not settings.ignore_eos:
            body["stop_token_ids"] = [self.eos_token_id]
        if not greedy and settings.seed is not None:
            body["seed"] = settings.seed
        return body

    def _tokens(self, answer: dict, ignore_eos: bool) -> tuple[list[int], str]:
        """A completion answer -> (generated ids without the final EOS, "eos" | "length")."""
        choice = _first_choice(answer)
        tokens = choice.get("token_ids")
        if not isinstance(tokens, list):
            raise BackendResponseError("the vLLM answer has no token_ids (is the server older than "
                                       "return_token_ids support?)")
        finish = choice.get("finish_reason")
        if finish == "stop":
            if tokens and tokens[-1] == self.eos_token_id and not ignore_eos:
                tokens = tokens[:-1]
            return tokens, "eos"
        if finish == "length":
            return tokens, "length"
        raise BackendResponseError(f"the vLLM server ended a completion with finish_reason {finish!r} "
                                   "(expected stop or length)")

    # -- scoring ----------------------------------------------------------------------------------
    def score_yes_no(self, image: np.ndarray, prompts: Sequence[PromptLike]) -> list[float]:
        """P("Yes") / (P("Yes") + P("No")) for the first answer token of each yes/no question on one image.

        One encoder pass for all the questions, then one one-token request per question asking for the
        raw log-probabilities of the ``▁Yes`` and ``▁No`` ids.

        Parameters
        ----------
        image : (H, W) uint8
        prompts : sequence of prompts with ``<image>``

        Returns
        -------
        list of float in [0, 1], one per prompt.

        Raises
        ------
        InvalidRequest
            Bad image or a prompt without ``<image>``.
        PayloadTooLarge, BackendUnavailable, BackendTimeout, BackendResponseError, HiddenSizeMismatch
        """
        prompts = list(prompts)
        if not prompts:
            return []
        check_image(image)
        for p in prompts:
            check_prompt(p)
        yes, no = self.tokenizer.answer_token_id("Yes"), self.tokenizer.answer_token_id("No")
        rows, batch = self._embed([image] * len(prompts), prompts)
        bodies = []
        for row, n in zip(rows, batch.prompt_lengths):
            if self.max_model_len - n < 1:
                raise InvalidRequest(f"the prompt is {n} tokens and the vLLM server's max_model_len is "
                                     f"{self.max_model_len}: restart it with a larger --max-model-len")
            bodies.append({"model": self.served_model, "prompt_embeds": self._encode(row), "max_tokens": 1,
                           "temperature": 0.0, "logprobs": 1, "logprob_token_ids": [yes, no],
                           "return_tokens_as_token_ids": True, "return_token_ids": True})
        out = []
        for answer, _ in self._post_all(bodies):
            top = (_first_choice(answer).get("logprobs") or {}).get("top_logprobs") or [None]
            step = top[0] or {}
            try:
                ly, ln = float(step[f"token_id:{yes}"]), float(step[f"token_id:{no}"])
            except (KeyError, TypeError, ValueError):
                raise BackendResponseError(
                    f"the vLLM answer lacks the log-probabilities of token ids {yes} (Yes) and {no} (No); "
                    f"got keys {sorted(step)[:4]} (does the server support logprob_token_ids?)") from None
            out.append(1.0 / (1.0 + math.exp(ln - ly)))  # softmax over the pair, as Engine.score_yes_no
        return out

    # -- HTTP -------------------------------------------------------------------------------------
    def _post_all(self, bodies: list[dict]) -> list[tuple[dict, float]]:
        """POST every body concurrently; every answer in order, or the first error once all have ended."""
        futures = [self._pool.submit(self._post, "/v1/completions", body) for body in bodies]
        answers, first_error = [], None
        for f in futures:
            try:
                answers.append(f.result())
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the others have ended
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return answers

    def _post(self, path: str, body: dict) -> tuple[dict, float]:
        t0 = time.perf_counter()
        answer = request_json(self.session, "POST", self.url + path, self.timeout_s, json=body,
                              hidden_size=self.hidden_size)
        return answer, (time.perf_counter() - t0) * 1e3


def _first_choice(answer: dict) -> dict:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise BackendResponseError("the vLLM answer has no choices; is the URL a vLLM OpenAI server?")
    return choices[0]


def request_json(session, method: str, url: str, timeout_s: float, *, json: dict | None = None,
                 hidden_size: int | None = None) -> dict:
    """One HTTP exchange with the server, every failure as a typed error (never a hang past the timeout).

    Raises
    ------
    BackendTimeout
        No answer within ``timeout_s`` (or no connection within min(10 s, timeout_s)).
    BackendUnavailable
        Connection refused, reset or unresolvable.
    HiddenSizeMismatch
        The server says the embeddings' hidden size is not its model's.
    BackendResponseError
        Any other 4xx/5xx (``.status``), or a body that is not JSON.
    """
    import requests

    try:
        response = session.request(method, url, json=json, timeout=(min(CONNECT_TIMEOUT_S, timeout_s), timeout_s))
    except requests.Timeout as exc:
        raise BackendTimeout(
            f"the vLLM server at {url} did not answer within {timeout_s:g} s; raise CXR_CDS_VLLM_TIMEOUT_S or "
            "check the server's load and logs") from exc
    except requests.ConnectionError as exc:
        raise BackendUnavailable(
            f"the vLLM server at {url} cannot be reached ({type(exc).__name__}); start it "
            "(`vllm serve DECODER_DIR --enable-prompt-embeds`) or fix CXR_CDS_VLLM_URL") from exc
    except requests.RequestException as exc:
        raise BackendUnavailable(f"the request to the vLLM server at {url} failed: {type(exc).__name__}") from exc
    if response.status_code >= 400:
        detail = _error_message(response)
        if "hidden_size" in detail and "does not match" in detail:
            raise HiddenSizeMismatch(
                f"the vLLM server at {url} serves a decoder of another hidden size ({detail}); our encoder's is "
                f"{hidden_size}: serve the decoder exported from the same checkpoint "
                "(`cxr-cds model export-decoder SRC DST`)", response.status_code, ours=hidden_size,
                served=_served_hidden(detail))
        if "enable-prompt-embeds" in detail:
            raise BackendResponseError(f"the vLLM server at {url} refuses prompt embeddings ({detail}); start it "
                                       "with --enable-prompt-embeds", response.status_code)
        raise BackendResponseError(f"the vLLM server at {url} answered {response.status_code}: {detail}",
                                   response.status_code)
    try:
        return response.json()
    except ValueError:
        raise BackendResponseError(f"the vLLM server at {url} answered {response.status_code} with a body that is "
                                   "not JSON; is the URL a vLLM OpenAI server?", response.status_code) from None


def _error_message(response) -> str:
    """vLLM's ``{"error": {"message": ...}}`` (or FastAPI's ``detail``), capped; else the status line."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or response.reason or "")[:300]
    if isinstance(body, dict):
        err = body.get("error")
        message = err.get("message") if isinstance(err, dict) else (err or body.get("detail") or body.get("message"))
        if message:
            return str(message)[:300]
    return str(body)[:300]


def _served_hidden(detail: str) -> int | None:
    import re

    found = re.search(r"model's hidden_size (\d+)", detail)
    return int(found.group(1)) if found else None


def open_vllm(config: ModelConfig, url: str, *, session=None, timeout_s: float = 120.0,
              max_payload_bytes: int = 256 << 20, max_concurrency: int = 64,
              served_model: str | None = None) -> VllmBackend:
    """Ask the server what it serves, load our encoder side, check the hidden size with a one-token probe.

    Our process loads the checkpoint with `model_runtime.load` (unquantized, eager) and then drops the
    decoder layers, keeping the vision tower, the projector, the token embeddings and the tokenizer: load
    time peaks at the whole model, steady state holds the encoder side only.

    Parameters
    ----------
    config : ModelConfig
        The published checkpoint whose decoder the server serves.
    url : str
        The server's base URL, e.g. ``http://127.0.0.1:8000``.
    session : requests.Session, optional
        Default: a new one with a connection pool of ``max_concurrency`` (closed by `VllmBackend.close`).
    timeout_s, max_payload_bytes, max_concurrency, served_model
        As `VllmBackend` (`served_model` default: the only model the server lists).

    Returns
    -------
    VllmBackend

    Raises
    ------
    BackendUnavailable, BackendTimeout, BackendResponseError
        The server cannot be reached or is not a vLLM OpenAI server serving the expected model.
    HiddenSizeMismatch
        The served decoder is not this checkpoint's.
    ModelLoadError
        The checkpoint cannot be loaded.
    """
    import requests

    from model_runtime.checkpoint import NativeNames
    from model_runtime.loader import load

    owns = session is None
    if session is None:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=max_concurrency)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    base = url.rstrip("/")
    info = describe_server(session, base, timeout_s, served_model)
    served_model, version, max_model_len = info["served_model"], info["vllm_version"], info["max_model_len"]

    # the decoder's quantization and decode path do not matter here (its layers are dropped below)
    plain = {"quantization": "none", "decode": "eager", "compile": False}
    if "int4_group_size" in {f.name for f in dataclasses.fields(config)}:
        plain["int4_group_size"] = None
    encoder = load(dataclasses.replace(config, **plain))
    # The decoder runs on the server: free its layers here (vision tower, projector, embeddings stay).
    language = encoder.model.get_submodule(NativeNames.of(encoder.model).language)
    language.layers = torch.nn.ModuleList()
    if encoder.device.type == "cuda":
        torch.cuda.empty_cache()
    backend = VllmBackend(encoder, session, base, served_model=served_model, vllm_version=version,
                          max_model_len=max_model_len, timeout_s=timeout_s, max_payload_bytes=max_payload_bytes,
                          max_concurrency=max_concurrency, owns_session=owns)
    # A one-position probe: a decoder of another hidden size answers 400 now, not at the first hook call.
    probe = torch.zeros((1, backend.hidden_size), dtype=encoder.model.get_input_embeddings().weight.dtype)
    try:
        backend._post("/v1/completions", {"model": served_model, "prompt_embeds": backend._encode(probe),
                                          "max_tokens": 1, "temperature": 0.0})
    except Exception:
        backend.close()
        raise
    log.info("vllm backend: %s at %s (vLLM %s, max_model_len %d)", served_model, base, version, max_model_len)
    return backend


def describe_server(session, url: str, timeout_s: float, served_model: str | None = None) -> dict[str, Any]:
    """``{"served_model", "vllm_version", "max_model_len"}`` of a vLLM OpenAI server (``/version``, ``/v1/models``).

    Raises
    ------
    BackendUnavailable, BackendTimeout, BackendResponseError
        Unreachable, silent, or not serving exactly one model (or not ``served_model``).
    """
    base = url.rstrip("/")
    version = request_json(session, "GET", base + "/version", timeout_s).get("version")
    listed = request_json(session, "GET", base + "/v1/models", timeout_s).get("data") or []
    models = {m.get("id"): m for m in listed if isinstance(m, dict)}
    if served_model is None:
        if len(models) != 1:
            raise BackendResponseError(f"the vLLM server at {base} serves {len(models)} models "
                                       f"({', '.join(map(str, models)) or 'none'}); name the one to use")
        served_model = next(iter(models))
    elif served_model not in models:
        raise BackendResponseError(f"the vLLM server at {base} does not serve {served_model!r}; it serves "
                                   f"{', '.join(map(str, models)) or 'nothing'}")
    max_model_len = int(models[served_model].get("max_model_len") or 0)
    if max_model_len < 1:
        raise BackendResponseError(f"the vLLM server at {base} does not say its max_model_len for {served_model!r}")
    return {"served_model": served_model, "vllm_version": str(version), "max_model_len": max_model_len}
