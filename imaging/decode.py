"""Decoding the first frame of pixel data with pydicom's decoder plugins, in a fixed and safe order.

pydicom tries every installed plugin for a transfer syntax and falls through to the next on an
``Exception``. Two ways that takes a process down: GDCM aborts on some corrupt JPEG 2000 codestreams
(an uncaught C++ exception: SIGABRT), and pylibjpeg-rle's Rust decoder panics on a corrupt RLE frame
(pyo3's ``PanicException`` is a ``BaseException``, past every ``except Exception``). So here each
plugin is asked by name, in :data:`PLUGIN_PREFERENCE` order: a panic is caught like any other failure,
and the plugins in :data:`ABORTING_PLUGINS` are tried last and only where a crash is contained
(``allow_aborting=True``, which :mod:`imaging.isolation` passes in its child process).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydicom import uid as uids
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder

from .errors import UndecodableImage
from .header_checks import int_value
from .jpeg2000 import J2K_SYNTAXES as J2K_REDUCIBLE, decode_first_frame_reduced

_JPEG = "pylibjpeg-libjpeg (or python-gdcm)"
#: Transfer syntax -> the package(s) that decode it with pydicom.
DECODER_PACKAGES: dict[str, str] = {
    uids.JPEGBaseline8Bit: _JPEG,
    uids.JPEGExtended12Bit: _JPEG,
    uids.JPEGLossless: _JPEG,
    uids.JPEGLosslessSV1: _JPEG,
    uids.JPEGLSLossless: "pyjpegls (or pylibjpeg-libjpeg, python-gdcm)",
    uids.JPEGLSNearLossless: "pyjpegls (or pylibjpeg-libjpeg, python-gdcm)",
    uids.JPEG2000Lossless: "pylibjpeg-openjpeg (or python-gdcm)",
    uids.JPEG2000: "pylibjpeg-openjpeg (or python-gdcm)",
    uids.HTJ2KLossless: "pylibjpeg-openjpeg>=2.2",
    uids.HTJ2KLosslessRPCL: "pylibjpeg-openjpeg>=2.2",
    uids.HTJ2K: "pylibjpeg-openjpeg>=2.2",
    uids.RLELossless: "pylibjpeg-rle (pydicom's own RLE decoder needs nothing)",
}


def ts_name(ts: str) -> str:
    """``'JPEG 2000 Image Compression (Lossless Only)' (1.2.840.10008.1.2.4.90)`` for messages."""
    name = uids.UID(ts).name
    return f"'{name}' ({ts})" if name != ts else f"'{ts}'"


def missing_decoder_message(transfer_syntax_uid: str) -> str:
    """What to say when pydicom has no working decoder for ``transfer_syntax_uid``."""
    package = DECODER_PACKAGES.get(transfer_syntax_uid)
    if package:
        return (f"no decoder installed for transfer syntax {ts_name(transfer_syntax_uid)}; "
                f"install {package}")
    return (f"no Python decoder exists for transfer syntax {ts_name(transfer_syntax_uid)}; "
            "ask the PACS to store or send it as Explicit VR Little Endian (1.2.840.10008.1.2.1)")


#: Order in which pydicom's decoder plugins are asked (those installed for the transfer syntax).
PLUGIN_PREFERENCE = ("pylibjpeg", "pyjpegls", "pillow", "pydicom", "gdcm")
#: Plugins known to end the process on corrupt input (GDCM: SIGABRT on an uncaught C++ exception).
ABORTING_PLUGINS = frozenset({"gdcm"})

#: Called with a plugin's name just before it is tried (the isolation child reports progress with it).
OnAttempt = Callable[[str], None]


def transfer_syntax(ds: Dataset) -> str:
    """The (0002,0010) Transfer Syntax UID of ``ds``, or "" when it has none."""
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")).rstrip("\x00").strip() if meta is not None else ""


def _failure(name: str, exc: BaseException) -> str:
    """One plugin's failure in one line: pydicom's "Unable to decode ..." preamble dropped."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Unable to decode as exceptions were raised"):
        lines = lines[1:]
    text = " ".join(lines)
    if text.startswith(f"{name}: "):
        text = text[len(name) + 2:]
    kind = type(exc).__name__
    return f"{name}: {kind}{': ' + text[:200] if text else ''}"


def decode_first_frame(ds: Dataset, what: str, *, allow_aborting: bool = False,
                       on_attempt: OnAttempt | None = None) -> tuple[np.ndarray, str]:
    """(H, W) or (H, W, 3) array of the first frame, and the photometric interpretation after decoding.

    No size or photometric guards: :func:`imaging.header_checks.check_pixel_header` runs before this.

    Parameters
    ----------
    ds
        The dataset (or its pixel-module subset with ``file_meta``).
    what
        How to name the image in messages.
    allow_aborting
        Also try the plugins in :data:`ABORTING_PLUGINS` (last). Only where a crash is contained.
    on_attempt
        Called with each plugin's name before it is tried.

    Raises
    ------
    UndecodableImage
        ``no_transfer_syntax``, ``decoder_missing`` (the message names the package to install) or
        ``corrupt_pixel_data`` (every plugin failed; the message lists them).
    """
    ts = transfer_syntax(ds)
    if not ts:
        raise UndecodableImage(f"{what} has no (0002,0010) Transfer Syntax UID, so its pixel data cannot "
                               "be interpreted; re-export it as a DICOM Part 10 file", code="no_transfer_syntax")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise UndecodableImage(f"{what}: {missing_decoder_message(ts)}", code="decoder_missing") from exc
    if not decoder.is_available:
        raise UndecodableImage(f"{what}: {missing_decoder_message(ts)}", code="decoder_missing")
    frames = int_value(ds, "NumberOfFrames", 1) or 1
    index = 0 if frames > 1 else None
    if decoder.is_native:
        plugins: list[str | None] = [None]            # uncompressed: numpy only, no plugin to choose
    else:
        installed = set(decoder.available_plugins)
        order = [p for p in PLUGIN_PREFERENCE if p in installed] + sorted(installed - set(PLUGIN_PREFERENCE))
        plugins = [p for p in order if allow_aborting or p not in ABORTING_PLUGINS]
        if not plugins:
            raise UndecodableImage(f"{what}: {missing_decoder_message(ts)} (installed: {', '.join(order)}, "
                                   "which may abort the process and is only used in a decoding child process)",
                                   code="decoder_missing")
    failures: list[str] = []
    for plugin in plugins:
        if on_attempt is not None:
            on_attempt(plugin or "native")
        try:
            arr, info = decoder.as_array(ds, index=index, as_rgb=True, decoding_plugin=plugin or "")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:   # noqa: BLE001 - a Rust panic (pyo3 PanicException) is a BaseException
            failures.append(_failure(plugin or "native", exc))
            continue
        photometric = str(info.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))
        return arr, photometric
    raise UndecodableImage(
        f"{what}: pixel data in transfer syntax {ts_name(ts)} could not be decoded ({'; '.join(failures)}); "
        "the file is probably truncated or corrupt: re-export it from the PACS", code="corrupt_pixel_data")


def decode_stage(ds: Dataset, what: str, min_short_edge: int | None = None, *, allow_aborting: bool = False,
                 on_attempt: OnAttempt | None = None) -> tuple[np.ndarray, str, int, tuple[str, ...]]:
    """The decode stage of the display pipeline: reduced JPEG 2000 when asked and possible, else full.

    Returns
    -------
    arr : np.ndarray
        (h, w) stored values, or (H, W, 3) RGB.
    photometric : str
        Photometric interpretation of ``arr``.
    n : int
        Resolution reduction (0 = full resolution).
    notes : tuple of str
        What was done (e.g. the reduced decode).

    Raises
    ------
    UndecodableImage
        As for :func:`decode_first_frame`.
    """
    if min_short_edge:
        if on_attempt is not None and transfer_syntax(ds) in J2K_REDUCIBLE:
            on_attempt("pillow (reduced-resolution JPEG 2000)")
        reduced = decode_first_frame_reduced(ds, what, min_short_edge)
        if reduced is not None:
            return reduced
    arr, photometric = decode_first_frame(ds, what, allow_aborting=allow_aborting, on_attempt=on_attempt)
    return arr, photometric, 0, ()
