"""cds_hooks: the CDS Hooks 2.0 service (discovery, hooks, feedback, study arrival, drafts, metrics).

Heavy parts (the pipeline, torch) load on first use of `create_app`/`build_runtime`.
"""
from __future__ import annotations

__all__ = ["create_app", "build_runtime", "Runtime", "Settings", "load_settings", "SettingsError"]


def __getattr__(name: str):
    # lazy: `cxr-cds --help` and the settings module stay import-light
    if name == "create_app":
        from cds_hooks.app import create_app
        return create_app
    if name in ("build_runtime", "Runtime"):
        from cds_hooks import runtime
        return getattr(runtime, name)
    if name in ("Settings", "load_settings"):
        from cds_hooks import settings
        return getattr(settings, name)
    if name == "SettingsError":
        from cds_hooks.errors import SettingsError
        return SettingsError
    raise AttributeError(f"module 'cds_hooks' has no attribute {name!r}")
