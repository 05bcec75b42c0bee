"""Decoding compressed pixel data in a child process with a time and a memory limit.

A decoder that aborts (GDCM: SIGABRT on an uncaught C++ exception), panics (pylibjpeg-rle: a Rust
panic), spins or allocates without bound must not take the service down: every compressed transfer
syntax is decoded by :func:`imaging.decode.decode_stage` in a fresh child of a ``forkserver`` (started
once, with the decoder libraries preloaded by :mod:`imaging.decoder_preload`, so a child costs a fork,
not an interpreter start). The child sets ``RLIMIT_AS`` before decoding and reports each decoder it
tries, so when it dies the parent can say which one did it. A crash, a timeout or the memory limit
becomes an :class:`~imaging.errors.UndecodableImage` (codes ``decoder_crashed``, ``decode_timeout``,
``decode_memory_limit``) that says what happened and what to do. Uncompressed data (numpy only, no
native decoder) is decoded in-process.

As with any ``forkserver``/``spawn`` use of multiprocessing, the program's main module must be safe to
import (the ``if __name__ == "__main__":`` idiom): the children import it.
"""
from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from pydicom import uid as uids
from pydicom.dataset import Dataset, FileMetaDataset

from . import errors
from .decode import decode_stage, transfer_syntax, ts_name
from .errors import ImagingError, UndecodableImage
from .header_checks import HEADER_ERRORS, bad_header_error, int_value

#: Transfer syntaxes decoded in-process: uncompressed, read with numpy (no native decoder to crash).
IN_PROCESS_SYNTAXES = frozenset({uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian,
                                 uids.DeflatedExplicitVRLittleEndian, uids.ExplicitVRBigEndian})

#: Module the forkserver imports once, so that every decoding child starts with the decoders loaded.
PRELOAD = "imaging.decoder_preload"


@dataclass(frozen=True)
class DecodeLimits:
    """Limits on decoding one compressed frame in a child process.

    Attributes
    ----------
    timeout_s
        Wall-clock seconds from the child's start to its answer; past it the child is killed.
    memory_bytes
        Address space the decoder may add to the child's (``RLIMIT_AS`` = the child's size at start +
        this). A 40-megapixel 16-bit frame needs well under 1 GB.
    max_concurrent
        Decoding children alive at once in this process (further decodes wait for a slot).
    """

    timeout_s: float = 60.0
    memory_bytes: int = 3 << 30
    max_concurrent: int = max(2, os.cpu_count() or 2)

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"DecodeLimits.timeout_s must be > 0 seconds, not {self.timeout_s}")
        if self.memory_bytes <= 0:
            raise ValueError(f"DecodeLimits.memory_bytes must be > 0, not {self.memory_bytes}")
        if self.max_concurrent < 1:
            raise ValueError(f"DecodeLimits.max_concurrent must be >= 1, not {self.max_concurrent}")


DEFAULT_DECODE_LIMITS = DecodeLimits()

_slots_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}
_context_lock = threading.Lock()
_context: Any = None


def _forkserver() -> Any:
    """The forkserver context, with the decoder preload registered before the server's first start."""
    global _context
    with _context_lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            # Keep the default '__main__' preload; add ours. Ignored if the forkserver already runs.
            ctx.set_forkserver_preload(["__main__", PRELOAD])
            _context = ctx
        return _context


def _slot(limit: int) -> threading.BoundedSemaphore:
    with _slots_lock:
        return _slots.setdefault(limit, threading.BoundedSemaphore(limit))


def _gib(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def pixel_subset(ds: Dataset) -> Dataset:
    """What decoding reads, as a new Dataset: the transfer syntax, groups 0028 (image pixel module,
    LUTs) and 7FE0 (pixel data, offset tables). Elements are copied as read (never re-validated)."""
    sub = Dataset()
    for tag in ds.keys():
        if tag.group in (0x0028, 0x7FE0):
            sub[tag] = ds.get_item(tag)
    sub.file_meta = FileMetaDataset()
    sub.file_meta.TransferSyntaxUID = transfer_syntax(ds)
    return sub


def _address_space() -> int:
    """This process's virtual memory size in bytes (first field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as fp:
        return int(fp.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _frame_bytes(ds: Dataset) -> int:
    """Bytes of one decoded frame as the header describes it (Rows x Columns x samples x bytes)."""
    rows, cols = int_value(ds, "Rows", 0) or 0, int_value(ds, "Columns", 0) or 0
    samples = int_value(ds, "SamplesPerPixel", 1) or 1
    bits = int_value(ds, "BitsAllocated", 16) or 16
    return max(0, rows) * max(0, cols) * max(1, samples) * max(1, -(-bits // 8))


def _child(conn: Connection, subset: Dataset, what: str, min_short_edge: int | None, memory_bytes: int) -> None:
    """Decoding child: limit the address space, decode, send ``(kind, value)`` messages, exit."""
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = _address_space() + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        # Reserve (never touch) room for the decoded frame twice over (decoder output + pydicom's array):
        # a frame the limit cannot hold fails here as a MemoryError, not as a decoder's vague error.
        np.empty(2 * _frame_bytes(subset), dtype=np.uint8)
        result = decode_stage(subset, what, min_short_edge, allow_aborting=True,
                              on_attempt=lambda name: conn.send(("trying", name)))
        conn.send(("ok", result))
    except MemoryError:
        conn.send(("memory", None))
    except ImagingError as exc:
        conn.send(("error", (type(exc).__name__, exc.message, exc.code)))
    except HEADER_ERRORS as exc:   # a malformed pixel-module value: the subset holds all of group 0028
        exc = bad_header_error(subset, what, exc)
        conn.send(("error", (type(exc).__name__, exc.message, exc.code)))
    except BaseException as exc:   # noqa: BLE001 - the child reports whatever it can before exiting
        conn.send(("crash", f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"))
    finally:
        conn.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def decode_isolated(ds: Dataset, what: str, min_short_edge: int | None = None,
                    limits: DecodeLimits = DEFAULT_DECODE_LIMITS) -> tuple[np.ndarray, str, int, tuple[str, ...]]:
    """:func:`imaging.decode.decode_stage`, in a child process for every compressed transfer syntax.

    Parameters
    ----------
    ds
        The dataset; only its pixel-module subset (:func:`pixel_subset`) crosses to the child.
    what
        How to name the image in messages.
    min_short_edge
        As for :func:`imaging.render.render_reduced`.
    limits
        Time and memory limits of the child.

    Returns
    -------
    tuple
        As :func:`imaging.decode.decode_stage`: ``(arr, photometric, n, notes)``.

    Raises
    ------
    UndecodableImage
        Every decode failure, plus ``decoder_crashed`` (the child died: the signal and the decoder it
        was running are named), ``decode_timeout`` and ``decode_memory_limit``.
    """
    ts = transfer_syntax(ds)
    if not ts or ts in IN_PROCESS_SYNTAXES:
        return decode_stage(ds, what, min_short_edge)
    ctx = _forkserver()
    subset = pixel_subset(ds)
    with _slot(limits.max_concurrent):
        receiver, sender = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child, args=(sender, subset, what, min_short_edge, limits.memory_bytes),
                            name="cxr-decode", daemon=True)
        started = False
        try:
            child.start()
            started = True
            sender.close()
            return _await(child, receiver, what, ts, limits)
        finally:
            receiver.close()
            sender.close()
            if started:
                if child.is_alive():
                    child.kill()
                child.join(5)
                if child.exitcode is not None:
                    child.close()


def _await(child: Any, receiver: Connection, what: str, ts: str,
           limits: DecodeLimits) -> tuple[np.ndarray, str, int, tuple[str, ...]]:
    deadline = time.monotonic() + limits.timeout_s
    tried: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not receiver.poll(remaining):
            child.kill()
            running = f" (in the {tried[-1]} decoder)" if tried else ""
            raise UndecodableImage(
                f"{what}: decoding its pixel data in transfer syntax {ts_name(ts)} took longer than the "
                f"{limits.timeout_s:g} s limit{running} and was stopped; the service is unaffected. The image "
                "may be corrupt or unusually large: re-export it from the PACS, or raise the decode time "
                "limit (DecodeLimits.timeout_s)", code="decode_timeout")
        try:
            kind, value = receiver.recv()
        except (EOFError, OSError):
            child.join(5)
            running = f"the {tried[-1]} decoder" if tried else "the decoder"
            raise UndecodableImage(
                f"{what}: {running} crashed while decoding its pixel data in transfer syntax {ts_name(ts)} "
                f"(decoding process {_death(child.exitcode)}); the service is unaffected, the crash was "
                f"contained in a child process. The pixel data is probably corrupt (or needed more than the "
                f"{_gib(limits.memory_bytes)} memory limit): re-export the image from the modality or PACS, "
                "or ask the PACS to send it as Explicit VR Little Endian", code="decoder_crashed") from None
        if kind == "trying":
            tried.append(value)
        elif kind == "ok":
            return value
        elif kind == "error":
            name, message, code = value
            cls = getattr(errors, name, None)
            cls = cls if isinstance(cls, type) and issubclass(cls, ImagingError) else UndecodableImage
            raise cls(message, code=code)
        elif kind == "memory":
            raise UndecodableImage(
                f"{what}: decoding its pixel data in transfer syntax {ts_name(ts)} needed more than the "
                f"{_gib(limits.memory_bytes)} memory limit and was stopped; the service is unaffected. The "
                "header or codestream may claim a huge image: re-export it from the PACS, or raise the limit "
                "(DecodeLimits.memory_bytes) if the image is genuine", code="decode_memory_limit")
        else:   # "crash": an unexpected exception in the child, reported before it exited
            raise UndecodableImage(
                f"{what}: decoding its pixel data in transfer syntax {ts_name(ts)} failed unexpectedly "
                f"({value}); the file is probably corrupt: re-export it from the PACS", code="decoder_crashed")
