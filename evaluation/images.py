"""Reading one dataset image as the model takes it: DICOM, PNG or JPEG to (H, W) uint8 MONOCHROME2."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.errors import UnreadableImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def load_image(path: str | Path) -> np.ndarray:
    """Read one image as the model takes it.

    DICOM goes through ``imaging.read_radiograph`` (modality/VOI LUT, MONOCHROME1 inversion);
    PNG/JPEG through Pillow, converted to 8-bit grayscale (16-bit PNG scaled by its maximum).

    Returns
    -------
    numpy.ndarray
        (H, W) uint8, MONOCHROME2.

    Raises
    ------
    UnreadableImage
        Missing file, unknown format, or a decoder error (the message carries the cause).
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(f"image {path.name} not found")
    try:
        if _is_dicom(path):
            from imaging import read_radiograph  # lazy: pydicom is only needed for DICOM rows

            return np.ascontiguousarray(read_radiograph(path).pixels)
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img.load()
                if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    a = np.asarray(img, dtype=np.float64)       # (H, W) 16-bit or float
                    top = a.max()
                    a = a / top * 255.0 if top > 0 else a
                    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
                return np.asarray(img.convert("L"), dtype=np.uint8)   # (H, W) uint8
        except UnidentifiedImageError as exc:
            raise UnreadableImage(
                f"image {path.name} is neither DICOM nor an image Pillow can read "
                f"(PNG, JPEG): {_without_folders(str(exc), path)}") from exc
    except (UnreadableImage, ImportError):
        raise              # a missing package is the installation's problem, not this row's
    except Exception as exc:  # any decoder failure is a row problem, never a crash of the run
        code = getattr(exc, "code", type(exc).__name__)
        raise UnreadableImage(f"image {path.name} could not be decoded ({code}): "
                              f"{_without_folders(str(exc), path)}") from exc


def _without_folders(message: str, path: Path) -> str:
    """A decoder's message with the image's folders cut out (they may hold MRNs / accessions)."""
    spellings = {str(path), str(path.absolute()), str(path.resolve())}
    for s in sorted(spellings, key=len, reverse=True):
        message = message.replace(s, path.name)
    # whole folder paths only ("/a/MRN123"), never a bare "/" or a word like "images" in the text
    folders = {f for f in (str(path.parent), str(path.parent.absolute()), str(path.parent.resolve()))
               if len(f) > 1 and ("/" in f or "\\" in f)}
    for s in sorted(folders, key=len, reverse=True):
        message = message.replace(s, "<folder>")
    return message


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


__all__ = ["IMAGE_SUFFIXES", "load_image"]
