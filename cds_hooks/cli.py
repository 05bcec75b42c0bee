"""`cxr-cds` command line: one group, each subcommand in its own module, imported lazily.

Lazy import keeps `cxr-cds findings` or `cxr-cds --help` fast (no torch import) and lets each
subcommand live next to the code it drives.
"""
from __future__ import annotations

import importlib

import click

# subcommand name -> "module:attribute" of a click.Command
COMMANDS = {
    "analyze": "cds_hooks.commands.analyze:analyze",
    "demo": "cds_hooks.commands.demo:demo",
    "serve": "cds_hooks.commands.serve:serve",
    "worker": "cds_hooks.commands.worker:worker",
    "generate": "cds_hooks.commands.model:generate",
    "model": "cds_hooks.commands.model:model",
    "findings": "cds_hooks.commands.findings:findings",
    "evaluate": "cds_hooks.commands.evaluate:evaluate",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup)
@click.version_option(package_name="cxr-cds")
def main() -> None:
    """Chest X-ray AI drafts for the EHR (CDS Hooks + DICOMweb + CXR-LLAVA).

    Every output is an AI-generated draft for clinician review, never a final report.
    """
