"""report.html: one self-contained page (plots embedded as base64 PNG) from results.json."""
from __future__ import annotations

import base64
import io
from html import escape
from typing import Mapping

METRIC_LABELS = (("sensitivity", "Sens"), ("specificity", "Spec"), ("ppv", "PPV"), ("npv", "NPV"), ("f1", "F1"))


def render_html(results: Mapping) -> str:
    """The whole page as a string: summary, published numbers, plots, tables, unreadable rows."""
    ds, model, plan = results["dataset"], results["model"], results["plan"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>CXR-LLAVA evaluation</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th:first-child,td:first-child{text-align:left}.note{color:#a33}"
        "img{max-width:100%}small{color:#666}",
        "</style></head><body>",
        "<h1>CXR-LLAVA evaluation on local data</h1>",
        f"<p class='note'>{escape(results.get('note', ''))}</p>",
        "<h2>Setup</h2><table>",
        _tr("Manifest", escape(f"{ds['manifest']} ({ds['layout']} layout)")),
        _tr("Split", escape(_split(ds.get("split")))),
        _tr("Cases", f"{ds['cases_evaluated']} evaluated of {ds['cases_selected']} selected "
                     f"({ds['cases_in_manifest']} usable in the manifest, {len(ds['skipped_rows'])} rows skipped, "
                     f"{len(ds['unreadable'])} unreadable)"),
        _tr("Model", escape(", ".join(f"{k} {v}" for k, v in model.items() if v not in (None, "")))),
        _tr("Plan", escape(", ".join(f"{k} {v}" for k, v in plan.items() if v not in (None, [], "")))),
        "</table>",
        _published(results),
        _sweep_section(results),
        _roc_section(results),
    ]
    for run in results["runs"]:
        parts.append(_run_section(run))
    if ds["unreadable"] or ds["skipped_rows"]:
        parts.append("<h2>Rows not evaluated</h2><table><tr><th>Row</th><th>Case</th><th>Why</th></tr>")
        for u in ds["unreadable"]:
            parts.append(_tr(str(u["row"]), escape(u["case_id"]), escape(f"{u['error']}: {u['message']}")))
        for s in ds["skipped_rows"]:
            parts.append(_tr(str(s["row"]), escape(s["case_id"] or ""), escape(s["reason"])))
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _published(results: Mapping) -> str:
    pub = results["published"]
    rows = [f"<h2>Published results for comparison</h2><p><small>{escape(pub['source'])}; "
            f"{escape(pub['protocol'])}.</small></p><table><tr><th>Dataset</th><th>Findings</th>"
            "<th>Average F1</th><th>Source</th></tr>"]
    for p in pub["average_f1"]:
        rows.append(_tr(escape(p["dataset"]), str(p["findings"]), f"{p['value']:.2f}", escape(p["version"])))
    rows.append("</table>")
    ours = [r for r in results["runs"] if r["metrics"]["exclude"]["macro"]["f1"]["value"] is not None]
    if ours:
        rows.append("<p>This run (uncertain excluded, macro over the primary findings): "
                    + "; ".join(f"{escape(_run_name(r))}: F1 {_fmt(r['metrics']['exclude']['macro']['f1'])}"
                                for r in ours) + "</p>")
    return "".join(rows)


def _split(split: Mapping | None) -> str:
    if not split or split["kept"] == "all":
        return "all rows (no split filter)"
    return f"{split['kept']} only (from {split['source']}; {split['rows_outside_split']} rows outside it left out)"


def _run_name(run: Mapping) -> str:
    if run["temperature"] is None:
        return run["prompt"]
    return f"{run['prompt']} T={run['temperature']:g} top_p={run['top_p']:g} x{run['repeats']}"


def _run_section(run: Mapping) -> str:
    cut = run.get("truncated_at_cap") or 0
    cut_note = (f" <strong>{cut} report(s) stopped at the token cap</strong> (unfinished text: findings after the "
                "cut are missing)." if cut else "")
    out = [f"<h2>{escape(_run_name(run))}</h2><p>{run['cases']} cases, {run['generations']} model calls.{cut_note}</p>"]
    for policy, title in (("exclude", "uncertain excluded (paper's protocol)"),
                          ("positive", "uncertain as positive"), ("negative", "uncertain as negative")):
        m = run["metrics"][policy]
        out.append(f"<h3>{escape(title)}</h3><table><tr><th>Finding</th><th>n</th>"
                   + "".join(f"<th>{label}</th>" for _, label in METRIC_LABELS) + "</tr>")
        for name, entry in m["per_finding"].items():
            out.append(_tr(escape(name), str(entry["n"]), *(_fmt(entry[k]) for k, _ in METRIC_LABELS)))
        for avg in ("macro", "micro"):
            out.append(_tr(f"<b>{avg}</b>", "", *(_fmt(m[avg][k]) for k, _ in METRIC_LABELS)))
        out.append("</table>")
        if policy == "exclude":
            out.append(_img(_confusion_figure(m["per_finding"], _run_name(run))))
    if "agreement" in run:
        agr = run["agreement"]
        out.append("<h3>Agreement across repeats</h3><table><tr><th>Finding</th><th>Images</th>"
                   "<th>All repeats agree</th><th>Pairwise agreement</th></tr>")
        for name, a in agr.items():
            if name == "all_findings_agree":
                continue
            out.append(_tr(escape(name), str(a["n"]), _pct(a["all_agree"]), _pct(a["pairwise"])))
        out.append(_tr("<b>every finding</b>", str(agr["all_findings_agree"]["n"]),
                       _pct(agr["all_findings_agree"]["value"]), ""))
        out.append("</table>")
        f1 = run["macro_f1_by_repeat"]
        if f1["mean"] is not None:
            sd = f" (SD {f1['sd']:.3f})" if f1["sd"] is not None else ""
            out.append(f"<p>Macro F1 per repeat: mean {f1['mean']:.3f}{sd}.</p>")
    if "scores" in run:
        out.append("<h3>Operating points from P(Yes)</h3>")
        for name, sc in run["scores"].items():
            out.append(f"<h4>{escape(name)}: AUC {_fmt(sc['auc'])} (n={sc['n']}, {sc['positives']} positive)</h4>"
                       "<table><tr><th>Threshold</th><th>TP</th><th>FP</th><th>FN</th><th>TN</th>"
                       + "".join(f"<th>{label}</th>" for _, label in METRIC_LABELS) + "</tr>")
            for t in sc["thresholds"]:
                out.append(_tr(f"{t['threshold']:.1f}", *(str(t[k]) for k in ("tp", "fp", "fn", "tn")),
                               *(_num(t[k]) for k, _ in METRIC_LABELS)))
            out.append("</table>")
    return "".join(out)


def _sweep_section(results: Mapping) -> str:
    """F1 against temperature per finding, one panel per (prompt, top_p)."""
    curves: dict[tuple[str, float], list[Mapping]] = {}
    for run in results["runs"]:
        if run["temperature"] is not None:
            curves.setdefault((run["prompt"], run["top_p"]), []).append(run)
    if not curves:
        return ""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(8.5 * len(curves), 4.5), squeeze=False)
    for ax, ((prompt, top_p), runs) in zip(axes[0], sorted(curves.items())):
        runs = sorted(runs, key=lambda r: r["temperature"])
        temps = [r["temperature"] for r in runs]
        for name in results["dataset"]["primary_findings"]:
            ys = [r["metrics"]["exclude"]["per_finding"][name]["f1"]["value"] for r in runs]
            ax.plot(temps, [float("nan") if y is None else y for y in ys], marker="o", label=name, alpha=0.8)
        macro = [r["metrics"]["exclude"]["macro"]["f1"] for r in runs]
        ys = [float("nan") if m["value"] is None else m["value"] for m in macro]
        lo = [y - m["ci"][0] if m["ci"] else 0 for y, m in zip(ys, macro)]
        hi = [m["ci"][1] - y if m["ci"] else 0 for y, m in zip(ys, macro)]
        ax.errorbar(temps, ys, yerr=[lo, hi], color="black", linewidth=2.5, marker="s", capsize=4,
                    label="macro (95% CI)")
        for pub, style in zip(results["published"]["average_f1"], (":", "--", "-.")):
            ax.axhline(pub["value"], color="grey", linestyle=style, linewidth=1,
                       label=f"paper {pub['value']:.2f} ({pub['dataset'].split()[0]}, {pub['findings']})")
        ax.set(title=f"{prompt}, top_p {top_p:g}", xlabel="temperature", ylabel="F1 (uncertain excluded)",
               ylim=(0, 1.02))
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return "<h2>F1 against temperature</h2>" + _img(fig)


def _roc_section(results: Mapping) -> str:
    """ROC curves from P(Yes), one panel per question prompt (without / with clinical context)."""
    runs = [r for r in results["runs"] if "scores" in r]
    if not runs:
        return ""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 5.5), squeeze=False)
    for ax, run in zip(axes[0], runs):
        for name, sc in run["scores"].items():
            auc = sc["auc"]["value"]
            if auc is None:            # one class only: no curve to draw (listed in the tables)
                continue
            ax.plot(sc["roc"]["fpr"], sc["roc"]["tpr"], label=f"{name} (AUC {auc:.2f}, n={sc['n']})",
                    linewidth=2.5 if name == "abnormal" else 1.5)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC from P(Yes), {run['prompt']}",
               xlim=(0, 1), ylim=(0, 1.01))
        if ax.get_legend_handles_labels()[0]:      # no curve when every finding has one class only
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return "<h2>ROC curves</h2>" + _img(fig)


def _confusion_figure(per_finding: Mapping, title: str):
    plt = _pyplot()
    names = [n for n, e in per_finding.items() if e["n"] > 0] or list(per_finding)[:1]
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        e = per_finding[name]
        cm = [[e["tn"], e["fp"]], [e["fn"], e["tp"]]]                 # rows: truth absent / present
        top = max(1, max(max(r) for r in cm))
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=top)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, str(cm[i][j]), ha="center", va="center", fontsize=11,
                        color="white" if cm[i][j] > top / 2 else "black")
        ax.set_xticks([0, 1], ["pred -", "pred +"], fontsize=7)
        ax.set_yticks([0, 1], ["true -", "true +"], fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.suptitle(f"Confusion matrices: {title}", fontsize=9)
    fig.tight_layout()
    return fig


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)      # no display: the page embeds PNGs
    import matplotlib.pyplot as plt

    return plt


def _img(fig) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _fmt(entry: Mapping) -> str:
    if entry["value"] is None:
        return "n/a"
    ci = entry.get("ci")
    return f"{entry['value']:.3f}" + (f" <small>[{ci[0]:.2f}, {ci[1]:.2f}]</small>" if ci else "")


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _tr(*cells: str) -> str:
    """A table row of cells that are already HTML (callers escape anything from the data)."""
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
