"""Imaging: find the study, choose the frontal chest radiograph, fetch it, turn it into 8-bit pixels.

Public API (docs/ARCHITECTURE.md); never imports model_runtime: the model gets a (H, W) uint8 array.
"""
from .dicomweb import DicomWebSource
from .errors import (ImagingError, ImagingUnavailable, NoFrontalRadiograph, StudyNotFound, UndecodableImage,
                     UnsupportedImage)
from .fingerprint import instance_fingerprint
from .folder import FolderSource
from .isolation import DEFAULT_DECODE_LIMITS, DecodeLimits
from .locate import locate_studies
from .prior import Prior, PriorUnknown, find_prior
from .radiograph import fetch_radiograph, find_radiograph, read_radiograph
from .render import MAX_PIXELS, to_display_8bit
from .select import select_frontal
from .source import MAX_BYTES, ImageSource
from .values import RadiographImage, Selection, StudyMatch

__all__ = [
    "ImageSource", "DicomWebSource", "FolderSource", "RadiographImage", "StudyMatch", "Selection",
    "locate_studies", "select_frontal", "find_prior", "Prior", "PriorUnknown",
    "fetch_radiograph", "find_radiograph", "read_radiograph",
    "to_display_8bit", "MAX_PIXELS", "MAX_BYTES", "DecodeLimits", "DEFAULT_DECODE_LIMITS", "instance_fingerprint",
    "ImagingError", "StudyNotFound", "NoFrontalRadiograph", "UnsupportedImage", "UndecodableImage",
    "ImagingUnavailable",
]
