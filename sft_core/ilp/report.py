"""Report files: report.json (everything), report.csv (one row per sample) and a self-contained report.html
(charts as inline base64 PNGs: cause distribution, data map, forgetting timeline, before/after; example
tables per cause). All written atomically."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from sft_core.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text

from .config import CAUSE_TITLES, CAUSES, UNEXPLAINED

COLORS = {"knowledge_gap": "#1f77b4", "knowledge_conflict": "#d62728", "data_inconsistency": "#9467bd",
          "left_forgetting": "#ff7f0e", "under_optimization": "#2ca02c", UNEXPLAINED: "#7f7f7f",
          "learned": "#c7c7c7"}
CSV_SIGNALS = ("pass_rate", "final_loss", "base_prob", "base_alt_margin", "pmi", "js_base_tuned", "exact_conflicts",
               "neighbour_similarity", "learned_then_lost", "last_seen_fraction", "stages_after", "confidence",
               "variability", "correctness", "forgetting_events", "density_percentile", "cluster_size",
               "target_tokens", "loss_drop")
EXAMPLES_PER_CAUSE = 8


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _cause_of(sample: dict) -> str:
    return sample["cause"] if sample["unlearned"] else "learned"


def charts(report: dict) -> dict[str, str]:
    """``{name: base64 PNG}`` for the charts the data supports."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = {}
    counts = report["summary"]["causes"]
    names = [c for c in (*CAUSES, UNEXPLAINED)]
    figure, axis = plt.subplots(figsize=(7, 3))
    axis.barh([n.replace("_", " ") for n in names], [counts.get(n, 0) for n in names],
              color=[COLORS[n] for n in names])
    axis.invert_yaxis()
    axis.set_xlabel("unlearned samples")
    axis.set_title(f"causes of {report['summary']['unlearned']} unlearned of {report['summary']['samples']} samples")
    result["cause_distribution"] = _png(figure)

    samples = report["samples"]
    points = [(s["signals"].get("confidence"), s["signals"].get("variability"), _cause_of(s)) for s in samples]
    points = [p for p in points if p[0] is not None and p[1] is not None]
    if points:
        figure, axis = plt.subplots(figsize=(6, 4.5))
        for group in ["learned", *CAUSES, UNEXPLAINED]:
            xs = [p[1] for p in points if p[2] == group]
            ys = [p[0] for p in points if p[2] == group]
            if xs:
                axis.scatter(xs, ys, s=18 if group == "learned" else 28, alpha=0.6 if group == "learned" else 0.9,
                             color=COLORS[group], label=group.replace("_", " "), edgecolors="none")
        axis.set_xlabel("variability (std of target probability over checkpoints)")
        axis.set_ylabel("confidence (mean target probability)")
        axis.set_title("data map")
        axis.legend(fontsize=7, loc="best")
        result["data_map"] = _png(figure)

    dynamics = report.get("dynamics")
    if dynamics and dynamics.get("steps"):
        figure, axis = plt.subplots(figsize=(7, 3.5))
        steps = dynamics["steps"]
        for group, values in dynamics["correct_fraction_by_cause"].items():
            if values:
                axis.plot(steps, values, marker="o", markersize=3, color=COLORS.get(group, "#000000"),
                          label=group.replace("_", " "))
        for stage in dynamics["stages"][1:]:
            axis.axvline(stage["start_step"], color="#555555", linestyle="--", linewidth=0.8)
        for stage in dynamics["stages"]:
            axis.text((stage["start_step"] + stage["end_step"]) / 2, 1.03, stage["name"], ha="center", fontsize=7)
        axis.set_ylim(-0.02, 1.08)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("fraction reproduced (teacher-forced)")
        axis.set_title("forgetting timeline by final cause", pad=14)
        axis.legend(fontsize=7, loc="lower right")
        result["forgetting_timeline"] = _png(figure)

    comparison = report.get("comparison")
    if comparison and comparison["by_cause"]:
        figure, axis = plt.subplots(figsize=(7, 3))
        causes = list(comparison["by_cause"])
        before = [comparison["by_cause"][c]["before"] for c in causes]
        after = [comparison["by_cause"][c]["still_unlearned"] for c in causes]
        positions = range(len(causes))
        axis.bar([p - 0.2 for p in positions], before, width=0.4, label="unlearned before", color="#bbbbbb")
        axis.bar([p + 0.2 for p in positions], after, width=0.4, label="still unlearned after",
                 color=[COLORS.get(c, "#000") for c in causes])
        axis.set_xticks(list(positions), [str(c).replace("_", "\n") for c in causes], fontsize=7)
        axis.set_title("before / after mitigation, by original cause")
        axis.legend(fontsize=7)
        result["before_after"] = _png(figure)
    return result


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _short(text, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def render_html(report: dict) -> str:
    images = charts(report)
    summary = report["summary"]
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>ILP diagnosis</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}"
             "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}td,th{border:1px solid #ccc;"
             "padding:2px 6px;text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}"
             "</style></head><body>",
             "<h1>Incomplete-learning diagnosis</h1>",
             f"<p>{summary['samples']} training samples, <b>{summary['unlearned']} unlearned</b> "
             f"({100 * summary['unlearned_rate']:.1f}%), {summary['tuned_models']} tuned model(s); "
             f"diagnosis took {summary['seconds']} s.</p>"]
    titles = {"cause_distribution": "Cause distribution", "data_map": "Data map",
              "forgetting_timeline": "Forgetting timeline", "before_after": "Before / after mitigation"}
    for name, data in images.items():
        parts.append(f"<h2>{titles[name]}</h2><img id='{name}' alt='{titles[name]}' "
                     f"src='data:image/png;base64,{data}'>")
    if report.get("comparison"):
        c = report["comparison"]
        rows = [[cause, r["before"], r["still_unlearned"], r["learned"], r["removed"]] for cause, r in c["by_cause"].items()]
        parts.append(_table(rows, ["cause (before)", "unlearned before", "still unlearned", "learned now", "removed"]))
        parts.append(f"<p>Unlearned {c['unlearned_before']} -> {c['unlearned_after']} "
                     f"(newly unlearned: {c['newly_unlearned']}).</p>")
    parts.append("<h2>Examples per cause</h2>")
    for cause in (*CAUSES, UNEXPLAINED):
        members = sorted((s for s in report["samples"] if s["cause"] == cause), key=lambda s: -(s["confidence"] or 0))
        if not members:
            continue
        parts.append(f"<h3 id='cause-{cause}'>{cause.replace('_', ' ')} ({len(members)}): "
                     f"{html.escape(CAUSE_TITLES[cause])}</h3>")
        rows = [[s["index"], _short(s["input"]), _short(s["target"], 40), _short(s["greedy"], 40), s["pass_rate"],
                 s["confidence"], ", ".join(s["secondary"]),
                 "; ".join(f"{k}={v}" for k, v in s["evidence"].items())] for s in members[:EXAMPLES_PER_CAUSE]]
        parts.append(_table(rows, ["#", "input", "target", "tuned answer", "pass rate", "confidence", "secondary",
                                   "evidence"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_csv_text(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "key", "task", "source", "input", "target", "greedy", "pass_rate", "unlearned", "cause",
                     "secondary", "confidence", *CSV_SIGNALS])
    for s in report["samples"]:
        writer.writerow([s["index"], s["key"], s["task"], s["source"], s["input"], s["target"], s["greedy"],
                         s["pass_rate"], int(s["unlearned"]), s["cause"] or "", ";".join(s["secondary"]),
                         "" if s["confidence"] is None else s["confidence"],
                         *["" if s["signals"].get(n) is None else s["signals"][n] for n in CSV_SIGNALS]])
    return buffer.getvalue()


def write_report(report: dict, out_dir) -> dict[str, Path]:
    """Write report.json, report.csv and report.html into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "csv": out_dir / "report.csv", "html": out_dir / "report.html"}
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["csv"], write_csv_text(report))
    atomic_write_bytes(paths["html"], render_html(report).encode("utf-8"))
    return paths


def read_json(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
