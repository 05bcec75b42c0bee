"""Preprocessing against values computed by hand from the reference rules."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model_runtime import InvalidRequest
from model_runtime.preprocess import normalize, preprocess, resize_and_crop

MEAN, STD = 0.5518136078431373, 0.3821719215686275


def test_black_and_white_normalise_to_hand_computed_values():
    out = normalize(np.array([[0, 255]], dtype=np.uint8))
    assert out.dtype == np.float32
    # (0 - 0.5518136) / 0.3821719 and (1 - 0.5518136) / 0.3821719
    assert out[0, 0] == pytest.approx(-1.4438881, abs=1e-6)
    assert out[0, 1] == pytest.approx(1.1727350, abs=1e-6)


def test_normalise_is_float64_scale_then_float32_arithmetic():
    v = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = (v.astype(np.float64) * (1 / 255)).astype(np.float32)
    assert np.array_equal(normalize(v), (x - np.float32(MEAN)) / np.float32(STD))


def test_square_image_of_the_right_size_is_not_resized():
    img = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    assert np.array_equal(resize_and_crop(img, 64), img)


def test_shortest_edge_lanczos_then_centre_crop():
    img = np.random.default_rng(1).integers(0, 256, (100, 130), dtype=np.uint8)  # (H, W), landscape
    # short edge 100 -> 64; long edge int(64 * 130 / 100) = 83; crop left (83 - 64) // 2 = 9, top 0
    expected = np.asarray(Image.fromarray(img).resize((83, 64), Image.Resampling.LANCZOS).crop((9, 0, 73, 64)))
    assert np.array_equal(resize_and_crop(img, 64), expected)


def test_portrait_image_crops_vertically():
    img = np.zeros((160, 64), dtype=np.uint8)
    img[48:112] = 200  # the centre 64 rows: top = (160 - 64) // 2 = 48
    assert np.all(resize_and_crop(img, 64) == 200)


def test_small_images_are_upscaled_and_batched_channel_first():
    imgs = [np.full((32, 40), 128, dtype=np.uint8), np.full((64, 64), 0, dtype=np.uint8)]
    pixels = preprocess(imgs, 64)
    assert tuple(pixels.shape) == (2, 1, 64, 64) and str(pixels.dtype) == "torch.float32"
    assert float(pixels[0].min()) == pytest.approx((128 / 255 - MEAN) / STD, abs=1e-6)


def test_16_bit_image_is_rejected_with_the_fix():
    with pytest.raises(InvalidRequest, match=r"image must be 8-bit \(uint8, 0-255\), got dtype uint16, max value "
                                             r"4095; window 16-bit DICOM pixels to 8-bit first"):
        preprocess([np.full((8, 8), 4095, dtype=np.uint16)], 64)


def test_integer_image_within_8_bit_says_to_cast():
    with pytest.raises(InvalidRequest, match=r"values fit in 0-255: cast with .astype\(np.uint8\)"):
        preprocess([np.full((8, 8), 12, dtype=np.int64)], 64)


def test_colour_image_is_rejected():
    with pytest.raises(InvalidRequest, match=r"2-D grayscale array \(H, W\), got shape \(8, 8, 3\)"):
        preprocess([np.zeros((8, 8, 3), dtype=np.uint8)], 64)


def test_non_array_is_rejected():
    with pytest.raises(InvalidRequest, match="image must be a numpy array"):
        preprocess([[[0, 1]]], 64)
