"""The rendition of a radiograph that the review page shows: the 8-bit image the model read, downscaled, as PNG.

Pure: pixels in, bytes out. The analysis job stores one per analysis (``ReviewStore.put_rendition``)
so the clinician sees exactly the image that was read, without the service keeping DICOM.
"""
from __future__ import annotations

import io

import numpy as np

RENDITION_MAX_EDGE = 1024


def render_rendition(pixels: np.ndarray, max_edge: int = RENDITION_MAX_EDGE) -> bytes:
    """Encode an 8-bit grayscale radiograph as a PNG whose longer edge is at most ``max_edge``.

    Parameters
    ----------
    pixels : numpy.ndarray
        (H, W) uint8, MONOCHROME2 (0 = black): ``imaging.RadiographImage.pixels``, the model's input.
    max_edge : int
        Longest edge of the rendition in pixels; smaller images are kept at their size.

    Returns
    -------
    bytes
        A grayscale (mode ``L``) PNG.

    Raises
    ------
    ValueError
        ``pixels`` is not a 2-D uint8 array, is empty, or ``max_edge`` is not positive.
    """
    from PIL import Image

    if not isinstance(pixels, np.ndarray) or pixels.ndim != 2 or pixels.dtype != np.uint8:
        shape = getattr(pixels, "shape", None)
        dtype = getattr(pixels, "dtype", type(pixels).__name__)
        raise ValueError(f"a rendition needs (H, W) uint8 pixels, got shape {shape} dtype {dtype}; "
                         "pass RadiographImage.pixels (imaging.to_display_8bit output)")
    if pixels.size == 0:
        raise ValueError(f"a rendition needs a non-empty image, got shape {pixels.shape}")
    if max_edge <= 0:
        raise ValueError(f"max_edge must be > 0, got {max_edge}")
    image = Image.fromarray(np.ascontiguousarray(pixels))     # (H, W) uint8 -> mode "L"
    h, w = pixels.shape
    scale = max_edge / max(h, w)
    if scale < 1:
        # (H, W) -> (round(H*s), round(W*s)); LANCZOS keeps fine lines (pneumothorax edges) visible
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()
