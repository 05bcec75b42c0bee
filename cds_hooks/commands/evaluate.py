"""`cxr-cds evaluate`: measure the model on a site's own labelled images (the paper's experiments)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from evaluation.manifest import LAYOUTS
from evaluation.plan import EVALUATION_PROMPTS, PRESETS


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.command()
@click.option("--dataset", required=True, type=click.Path(exists=True, path_type=Path),
              help="Manifest: our CSV (path + finding columns or report), CheXpert/MIMIC-CXR label CSV, "
                   "or Indiana/OpenI XML file or folder.")
@click.option("--model", "model_ref", required=True, help="Checkpoint directory or hub id.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (results.json, per_image.csv, report.html); rerun to resume.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="One of the paper's experiments; explicit options override its values.")
@click.option("--prompt", "prompts", multiple=True, type=click.Choice(EVALUATION_PROMPTS),
              help="Prompt(s) [default: report.v1]. finding_question.v1 asks the yes/no questions without the "
                   "clinical context (like report.v1); finding_question.v1+context adds it (like report_context.v1).")
@click.option("--temperature", "temperatures", multiple=True, type=float, help="Temperature(s) [default: 0.2].")
@click.option("--top-p", "top_ps", multiple=True, type=float, help="top_p value(s) [default: 0.8].")
@click.option("--repeats", type=int, default=None, help="Generations per image and setting [default: 1].")
@click.option("--seed", type=int, default=None, help="Base seed (per-generation seeds derive from it) [default: 0].")
@click.option("--limit", type=int, default=None, help="Only the first N selected cases.")
@click.option("--min-age", type=int, default=None, help="Only cases at least this old (years).")
@click.option("--max-age", type=int, default=None, help="Only cases at most this old (years).")
@click.option("--max-new-tokens", type=int, default=None, help="Cap on generated tokens per report.")
@click.option("--bootstrap", type=int, default=None, help="Bootstrap resamples for CIs [default: 1000].")
@click.option("--split", default=None, metavar="NAME",
              help="Keep only this split: test, validate, train (MIMIC-CXR split file, or a `split` column "
                   "in our CSV), or all [default: test when the dataset has split information, else all].")
@click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True)
@click.option("--images-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Where relative image paths start [default: the manifest's folder].")
@click.option("--revision", default=None, help="Hub revision (commit) to pin.")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None)
@click.option("--quantization", type=click.Choice(["none", "8bit", "4bit", "int4"]), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per model call.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Threads decoding images ahead of the model.")
@click.option("--backend", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
              envvar="CXR_CDS_BACKEND", help="hf: in-process; vllm: the decoder on --vllm-url [env CXR_CDS_BACKEND].")
@click.option("--vllm-url", default=None, envvar="CXR_CDS_VLLM_URL",
              help="Base URL of the vLLM server (with --backend vllm) [env CXR_CDS_VLLM_URL].")
def evaluate(dataset, model_ref, out_dir, preset, prompts, temperatures, top_ps, repeats, seed, limit, min_age,
             max_age, max_new_tokens, bootstrap, split, layout, images_root, revision, device, dtype, quantization,
             batch_size, workers, backend="hf", vllm_url=None) -> None:
    """Evaluate the model on a labelled dataset: F1 etc. per finding with 95% CIs, as in the paper.

    Writes results.json, per_image.csv (every generation; the cache that makes a rerun resume)
    and report.html to --out. Unreadable images are listed and skipped, never fatal.
    """
    from evaluation import EvaluationError, evaluate as run_evaluation, make_plan, read_manifest

    try:
        plan = make_plan(preset, prompts=list(prompts), temperatures=list(temperatures), top_ps=list(top_ps),
                         repeats=repeats, seed=seed, limit=limit, min_age=min_age, max_age=max_age,
                         max_new_tokens=max_new_tokens, bootstrap=bootstrap)
        manifest = read_manifest(dataset, layout=layout, images_root=images_root, split=split)
    except EvaluationError as exc:
        _fail(str(exc))
    if manifest.split != "all":
        click.echo(f"split: {manifest.split} only ({manifest.split_source}; "
                   f"{manifest.split_excluded} rows outside it left out)", err=True)
    elif manifest.layout == "mimic" and split is None:
        click.echo("warning: no mimic-cxr-2.0.0-split.csv(.gz) beside the labels or under --images-root: "
                   "scoring every study, most of them the model's training data; not comparable with the "
                   "paper's test-set F1 0.81 (add the split file, or pass --split all to silence this)", err=True)

    from model_runtime import ModelRuntimeError

    from evaluation import open_reader

    from cds_hooks.commands.model import check_backend

    check_backend(backend, vllm_url)
    try:
        reader = open_reader(model_ref, revision=revision, device=device, dtype=dtype,
                             quantization=quantization, batch_size=batch_size, backend=backend, vllm_url=vllm_url)
    except ModelRuntimeError as exc:
        _fail(str(exc))
    try:
        results = run_evaluation(manifest, reader, plan, out_dir, batch_size=batch_size, workers=workers)
    except (EvaluationError, ModelRuntimeError) as exc:
        _fail(str(exc))
    finally:
        reader.close()

    ds = results["dataset"]
    click.echo(f"evaluated {ds['cases_evaluated']} of {ds['cases_selected']} cases; "
               f"{results['work']['model_calls_now']} model calls now, "
               f"{results['work']['reused_from_per_image_csv']} reused from per_image.csv")
    for run in results["runs"]:
        f1 = run["metrics"]["exclude"]["macro"]["f1"]
        value = "n/a" if f1["value"] is None else f"{f1['value']:.3f}"
        ci = f" [{f1['ci'][0]:.3f}, {f1['ci'][1]:.3f}]" if f1["ci"] else ""
        setting = "" if run["temperature"] is None else f" T={run['temperature']:g} top_p={run['top_p']:g}"
        click.echo(f"  {run['prompt']}{setting}: macro F1 {value}{ci} (uncertain excluded; paper: 0.81 MIMIC-CXR, "
                   "0.56-0.62 Indiana/OpenI)")
    if ds["unreadable"]:
        rows = ", ".join(str(u["row"]) for u in ds["unreadable"])
        click.echo(f"unreadable rows (skipped, details in results.json): {rows}", err=True)
    click.echo(f"wrote {out_dir / 'results.json'}, {out_dir / 'per_image.csv'}, {out_dir / 'report.html'}")
