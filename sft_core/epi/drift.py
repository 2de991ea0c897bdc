"""Mask-drift analytics: the per-refresh records, the JSONL log and the `drift-plot` renderer."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sft_core.atomic_io import atomic_write_text

DRIFT_LOG_NAME = "epi_drift.jsonl"
DRIFT_PLOT_NAME = "epi_drift.png"


class DriftLog:
    """Append-only JSONL file of drift records (one line per refresh and task)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict]:
        return read_drift_log(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records newer than ``step`` (used on resume from an earlier checkpoint)."""
        if not self.path.exists():
            return
        kept = [r for r in self.read() if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def unchanged_drift(param_names: list[str], state) -> dict[str, dict]:
    """Per-tensor drift stats of a refresh that left the task's mask as it was (static, random, absent)."""
    per_tensor = {}
    appeared = state.changed_since_record
    for name, count in zip(param_names, state.protected_counts):
        per_tensor[name] = {"protected": count, "added": count if appeared else 0, "released": 0,
                            "intersection": 0 if appeared else count, "union": count,
                            "jaccard": 0.0 if appeared and count else 1.0}
    state.changed_since_record = False
    return per_tensor


def drift_record(state, per_tensor: dict[str, dict], *, step: int, refresh: int, method: str,
                 total_units: int) -> dict:
    """One JSONL line: totals over tensors plus the per-tensor Jaccard / protected / added / released."""
    union = sum(t["union"] for t in per_tensor.values())
    intersection = sum(t["intersection"] for t in per_tensor.values())
    protected = sum(t["protected"] for t in per_tensor.values())
    return {
        "step": step, "refresh": refresh, "task": state.name, "method": method, "task_steps": state.steps,
        "protected": protected, "protected_fraction": protected / total_units,
        "added": sum(t["added"] for t in per_tensor.values()),
        "released": sum(t["released"] for t in per_tensor.values()),
        "jaccard": 1.0 if union == 0 else intersection / union,
        "replays": state.replays,
        "tensors": {name: {k: t[k] for k in ("jaccard", "protected", "added", "released")}
                    for name, t in per_tensor.items()},
    }


def read_drift_log(path: str | os.PathLike) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
    return records


def plot_drift(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Render the drift log of ``run_dir`` as PNG curves per task; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    log_path = run_dir / DRIFT_LOG_NAME if run_dir.is_dir() else run_dir
    if not log_path.is_file():
        raise FileNotFoundError(f"{log_path}: no drift log (train with --method epi or static first)")
    records = read_drift_log(log_path)
    if not records:
        raise ValueError(f"{log_path}: the drift log is empty (no mask refresh happened yet)")
    output = Path(output) if output else log_path.parent / DRIFT_PLOT_NAME

    by_task: dict[str, list[dict]] = {}
    for record in records:
        by_task.setdefault(record["task"], []).append(record)
    panels = [("jaccard", "Jaccard overlap with previous mask"), ("protected", "protected elements"),
              ("added", "newly protected"), ("released", "released")]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for axis, (key, title) in zip(axes.flat, panels):
        for task, rows in sorted(by_task.items()):
            rows = sorted(rows, key=lambda r: r["step"])
            axis.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", markersize=3, label=task)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("optimizer step")
    axes[0][0].set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=8)
    method = records[0].get("method", "")
    figure.suptitle(f"EPI mask drift ({method}) - {run_dir.name}")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    os.replace(tmp, output)
    return output
