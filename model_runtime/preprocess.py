"""Image preprocessing, bit-exact with the original CXR-LLAVA (reference/CXR_LLAVA.md, "Image preprocessing")."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from model_runtime.errors import InvalidRequest

# The released checkpoint's image_preprocess_cfg; each checkpoint's own values are read from its config.
DEFAULT_MEAN = 0.5518136078431373
DEFAULT_STD = 0.3821719215686275


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate a model input image and return it as (H, W) uint8.

    Raises
    ------
    InvalidRequest
        Not a numpy array, not 2-D, or not 8-bit (the original rejects values > 255; windowing
        16-bit DICOM to 8 bits is the imaging package's job, before the model).
    """
    if not isinstance(image, np.ndarray):
        raise InvalidRequest(f"image must be a numpy array (H, W) uint8, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise InvalidRequest(
            f"image must be a 2-D grayscale array (H, W), got shape {tuple(image.shape)}; "
            "convert colour images to grayscale first"
        )
    if image.dtype != np.uint8:
        if image.size and np.issubdtype(image.dtype, np.integer) and image.min() >= 0 and image.max() <= 255:
            detail = f"dtype {image.dtype} (values fit in 0-255: cast with .astype(np.uint8))"
        else:
            vmax = image.max() if image.size else None
            detail = f"dtype {image.dtype}, max value {vmax}"
        raise InvalidRequest(
            f"image must be 8-bit (uint8, 0-255), got {detail}; window 16-bit DICOM pixels to 8-bit "
            "first (imaging.to_display_8bit)"
        )
    if min(image.shape) < 1:
        raise InvalidRequest(f"image is empty: shape {tuple(image.shape)}")
    return image


def resize_and_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Shortest edge to ``size`` with PIL LANCZOS, then centre crop: (H, W) uint8 -> (size, size) uint8."""
    image = check_image(image)
    pil = Image.fromarray(image).convert("L")  # (H, W) uint8 -> mode L
    w, h = pil.size
    short, long = (w, h) if w <= h else (h, w)
    if short != size:
        # The original's `resample=True` is 1 == LANCZOS; the long edge is truncated, not rounded.
        new_long = int(size * long / short)
        new_w, new_h = (size, new_long) if w <= h else (new_long, size)
        pil = pil.resize((new_w, new_h), resample=Image.Resampling.LANCZOS)
    w, h = pil.size
    top, left = (h - size) // 2, (w - size) // 2
    pil = pil.crop((left, top, left + size, top + size))
    return np.asarray(pil, dtype=np.uint8)


def normalize(pixels: np.ndarray, mean: float = DEFAULT_MEAN, std: float = DEFAULT_STD) -> np.ndarray:
    """(H, W) uint8 -> (H, W) float32: ``uint8 * (1/255)`` in float64, cast to float32, then (x - mean) / std in float32."""
    x = (pixels.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
    return (x - np.float32(mean)) / np.float32(std)


def preprocess(
    images: list[np.ndarray] | np.ndarray, size: int, mean: float = DEFAULT_MEAN, std: float = DEFAULT_STD
) -> torch.Tensor:
    """8-bit grayscale images -> pixel values (B, 1, size, size) float32, channel-first.

    Parameters
    ----------
    images : (H, W) uint8 array or list of them
    size : int
        The checkpoint's ``clip_vision_cfg.image_size`` (512 for the real model).
    mean, std : float
        The checkpoint's ``image_preprocess_cfg``.

    Raises
    ------
    InvalidRequest
        An image is not (H, W) uint8.
    """
    if isinstance(images, np.ndarray):
        images = [images]
    batch = np.stack([normalize(resize_and_crop(im, size), mean, std) for im in images])  # (B, S, S) float32
    return torch.from_numpy(batch).unsqueeze(1)  # (B, 1, S, S)
