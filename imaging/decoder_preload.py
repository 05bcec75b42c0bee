"""Imported once by the decoding forkserver (:mod:`imaging.isolation`): load the decoders up front.

Every decoding child is forked from that server, so it starts with pydicom's decoder plugins and the
libraries behind them (OpenJPEG, libjpeg, CharLS, the RLE decoder, Pillow, GDCM) already imported. A
library that fails to import is skipped: pydicom then reports it as missing in the child.
"""
from __future__ import annotations

import importlib

from pydicom import uid as uids
from pydicom.pixels import get_decoder

_LIBRARIES = ("numpy", "pylibjpeg", "openjpeg", "libjpeg", "rle", "jpeg_ls", "PIL.Image",
              "PIL.Jpeg2KImagePlugin", "PIL.JpegImagePlugin", "gdcm")


def _warm() -> None:
    importlib.import_module(f"{__package__}.isolation")     # what the children run
    for name in _LIBRARIES:
        try:
            importlib.import_module(name)
        except Exception:   # noqa: BLE001 - absent or broken (gdcm and a 'dl' dir on sys.path): not preloaded
            pass
    for ts in uids.AllTransferSyntaxes:
        try:
            get_decoder(ts).available_plugins
        except Exception:   # noqa: BLE001 - no decoder for this syntax
            pass


_warm()
