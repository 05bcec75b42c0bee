"""`cxr-cds generate` (one image, one prompt, the model) and `cxr-cds model init-tiny|convert|export-decoder`.

Heavy imports (torch, transformers, imaging, prompts) happen inside the commands so `--help` stays fast.
Errors: one line on stderr, exit status 1, no traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

TASK_TEMPLATES = {"report": "report.v1", "differential": "differential.v1", "question": "question.v1"}
# Every generated text is a draft: labelled in the JSON and announced on stderr before the text.
AI_DRAFT_NOTICE = "AI-generated draft for clinician review, not a final report."


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _quiet_transformers() -> None:
    """No progress bars or advisory warnings on the terminal: the command prints its result only."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def read_image(path: Path):
    """A .dcm (windowed to 8-bit by the imaging package) or a .png/.jpg -> (H, W) uint8 MONOCHROME2."""
    import numpy as np

    if path.suffix.lower() in (".dcm", ".dicom"):
        from imaging import read_radiograph

        return read_radiograph(path).pixels
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                img = img.convert("L")
            return np.asarray(img)  # 16-bit PNGs stay 16-bit: the engine rejects them with the fix
    except UnidentifiedImageError:
        _fail(f"{path} is not a readable PNG/JPEG image (give a .png, .jpg or .dcm file)")


@click.command("generate")
@click.option("--model", "model_path", required=True, help="Checkpoint directory or hub id (ECOFRI/CXR-LLAVA-v2).")
@click.option("--image", "image_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Chest radiograph: .png, .jpg or .dcm.")
@click.option("--task", type=click.Choice(sorted(TASK_TEMPLATES)), default="report", show_default=True)
@click.option("--question", help="The free question for --task question.")
@click.option("--temperature", type=float, default=0.2, show_default=True, help="<= 0.001 means greedy.")
@click.option("--top-p", type=float, default=0.8, show_default=True)
@click.option("--max-new-tokens", type=int, default=None, help="Lower cap on new tokens (default: the original's 512).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default=None,
              help="Default: bfloat16 on CUDA, float32 on CPU.")
@click.option("--quantization", type=click.Choice(["none", "8bit", "4bit", "int4"]), default=None,
              help="bitsandbytes 8bit/4bit (NF4) or torchao int4 (fast with --decode static on CUDA). "
                   "Default: 4bit on CUDA, none on CPU.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--decode", type=click.Choice(["eager", "static"]), default="eager", show_default=True,
              help="Decode backend: static = static KV cache (+ torch.compile on CUDA); same tokens, faster on GPU.")
@click.option("--revision", default=None, help="Hub revision to pin (hub ids only).")
@click.option("--seed", type=int, default=None, help="Sampling seed (same seed, same text).")
@click.option("--backend", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
              envvar="CXR_CDS_BACKEND", help="hf: in-process transformers; vllm: the decoder on a vLLM server "
                                             "(--vllm-url) [env CXR_CDS_BACKEND].")
@click.option("--vllm-url", default=None, envvar="CXR_CDS_VLLM_URL",
              help="Base URL of the vLLM server serving `cxr-cds model export-decoder` output [env CXR_CDS_VLLM_URL].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the text.")
def generate(model_path, image_path, task, question, temperature, top_p, max_new_tokens, dtype, quantization,
             device, decode, revision, seed, backend, vllm_url, as_json):
    """Generate a draft report (or answer) for one chest radiograph. Output is an AI draft for review."""
    from model_runtime import GenerationRequest, GenerationSettings, ModelConfig, ModelRuntimeError, open_backend

    if task == "question" and not question:
        _fail("--task question needs --question TEXT, e.g. --question 'Is there a pneumothorax?'")
    if question and task != "question":
        _fail(f"--question is only used with --task question (got --task {task})")
    check_backend(backend, vllm_url)
    try:
        import prompts

        prompt = prompts.render(TASK_TEMPLATES[task], question=question)
        image = read_image(image_path)
        settings = GenerationSettings(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        _quiet_transformers()
        model = open_backend(backend, ModelConfig(model=model_path, revision=revision, device=device, dtype=dtype,
                                                  quantization=quantization, decode=decode), vllm_url=vllm_url)
        try:
            result = model.generate([GenerationRequest(image=image, prompt=prompt, settings=settings)])[0]
        finally:
            model.close()
    except ModelRuntimeError as exc:
        _fail(exc.message)
    except (ValueError, OSError) as exc:  # PromptError, ImagingError subclasses, unreadable files
        _fail(str(exc))
    except Exception as exc:
        if type(exc).__module__.startswith("imaging"):
            _fail(str(exc))
        raise
    if as_json:
        click.echo(json.dumps(dict(result.to_json(), task=task, status="preliminary", ai_generated=True,
                                   notice=AI_DRAFT_NOTICE), indent=2))
    else:
        click.echo(AI_DRAFT_NOTICE, err=True)
        click.echo(result.text)


def check_backend(backend: str, vllm_url: str | None) -> None:
    """--backend vllm needs --vllm-url; --vllm-url needs --backend vllm (exit 1 naming the option)."""
    if backend == "vllm" and not vllm_url:
        _fail("--backend vllm needs --vllm-url URL (or CXR_CDS_VLLM_URL), e.g. http://127.0.0.1:8000")
    if backend == "hf" and vllm_url:
        _fail("--vllm-url (or CXR_CDS_VLLM_URL) is set but --backend is hf; add --backend vllm or drop the URL")


@click.group("model")
def model() -> None:
    """Model checkpoints: make the tiny demo model, convert the published layout to the native one."""


@model.command("init-tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
def init_tiny_command(directory: Path, seed: int) -> None:
    """Write a tiny random-weight checkpoint in the published CXR-LLAVA layout (meaningless text)."""
    from model_runtime import init_tiny

    try:
        init_tiny(directory, seed=seed)
    except OSError as exc:
        _fail(f"cannot write the tiny model to {directory}: {exc}")
    click.echo(f"tiny random-weight CXR-LLAVA checkpoint written to {directory} (seed {seed}); "
               "it produces meaningless text")


@model.command("convert")
@click.argument("source")
@click.argument("destination", type=click.Path(file_okay=False, path_type=Path))
@click.option("--revision", default=None, help="Hub revision to pin when SOURCE is a hub id.")
def convert_command(source: str, destination: Path, revision: str | None) -> None:
    """Write the native (VipLlava) checkpoint of a published one; later loads skip the key mapping."""
    from model_runtime import ModelRuntimeError, convert

    _quiet_transformers()
    try:
        out = convert(source, destination, revision=revision)
    except ModelRuntimeError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"cannot write {destination}: {exc}")
    click.echo(f"native checkpoint written to {out}")


@model.command("export-decoder")
@click.argument("source")
@click.argument("destination", type=click.Path(file_okay=False, path_type=Path))
@click.option("--revision", default=None, help="Hub revision to pin when SOURCE is a hub id.")
def export_decoder_command(source: str, destination: Path, revision: str | None) -> None:
    """Write the decoder of a published checkpoint as a LlamaForCausalLM checkpoint, for `vllm serve`."""
    from model_runtime import ModelRuntimeError, export_decoder

    try:
        out = export_decoder(source, destination, revision=revision)
    except ModelRuntimeError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"cannot write {destination}: {exc}")
    click.echo(f"LlamaForCausalLM decoder written to {out}; serve it with "
               f"`vllm serve {out} --enable-prompt-embeds` and use --backend vllm --vllm-url URL")
