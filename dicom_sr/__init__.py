"""DICOM Structured Report of an AI draft: build it (pure) and store it in the PACS (STOW-RS).

Public API (docs/ARCHITECTURE.md); imports prompts and imaging, never cds_hooks.
"""
from .build import DRAFT_NOTICE, SERIES_DESCRIPTION, build_sr, sr_uids
from .errors import DicomSrError, InvalidSrInput, SrStoreFailed, SrStoreRefused
from .header import image_header
from .pacs import FOLDER_SR_DIR, fetch_image_header, read_image_header, store_sr, write_for_analysis
from .values import SrInputs, SrRecord

__all__ = [
    "SrInputs", "SrRecord", "build_sr", "sr_uids", "image_header", "SERIES_DESCRIPTION", "DRAFT_NOTICE",
    "store_sr", "write_for_analysis", "fetch_image_header", "read_image_header", "FOLDER_SR_DIR",
    "DicomSrError", "InvalidSrInput", "SrStoreFailed", "SrStoreRefused",
]
