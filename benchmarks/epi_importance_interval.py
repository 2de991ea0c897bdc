"""What `EPIConfig.importance_interval` (update a task's importance EMA on every k-th of its steps) costs
in importance quality, on real gradients of a real fine-tuning run.

    python benchmarks/epi_importance_interval.py

minilm-l6 with per-task heads (the `fast` profile of `epi_quality.py`: SST-2 and two AG News pairs,
lowest 2 blocks frozen), trained with plain AdamW on a mixed round-robin stream of the tasks. Every
step's gradient is fed to one importance EMA per task and per variant (k = 1, 2, 4, 8, and k = 4 with the
sampled steps shifted by 2), so all variants see the same trajectory. The EMAs are kept in fp32 here so
that ranks have no storage ties. At every would-be refresh (every `--refresh` steps of a task from the
second one on) each variant is compared with k = 1 per tensor:

- Spearman rank correlation of the importance (units where either EMA is non-zero; mean over tensors
  weighted by their units);
- overlap of the top-`ratio` masks the refresh would select: |A and B| / |A|.

Two references put the numbers in scale: k = 4 against k = 4 sampled on the other steps (how much the
choice of sampled steps alone moves the mask), and k = 1 against itself one refresh earlier (how much
the mask drifts between two refreshes anyway — the signal EPI follows).
Writes docs/results/epi_importance_interval.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from epi_quality import PROFILES, Bench, MultiHeadClassifier, freeze_lower, load_tasks  # noqa: E402
from sft_core.atomic_io import atomic_write_text  # noqa: E402
from sft_core.epi.importance import ImportanceAccumulator, get_estimator  # noqa: E402
from sft_core.epi.masks import top_k_indices  # noqa: E402

# (label, k, phase): a task's EMA is updated on its steps s (1-based) with (s - 1) % k == phase
VARIANTS = [("k=1", 1, 0), ("k=2", 2, 0), ("k=4", 4, 0), ("k=8", 8, 0), ("k=4, shifted by 2", 4, 2)]


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 (ties broken by position; callers drop the all-zero units, the only common ties)."""
    order = torch.argsort(values, stable=True)
    out = torch.empty(values.numel(), dtype=torch.float64)
    out[order] = torch.arange(values.numel(), dtype=torch.float64)
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    keep = (a > 0) | (b > 0)
    n = int(keep.sum())
    if n < 3:
        return float("nan"), 0
    ra, rb = ranks(a[keep]), ranks(b[keep])
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / torch.sqrt((ra * ra).sum() * (rb * rb).sum())), n


def compare(emas_a: list[torch.Tensor], emas_b: list[torch.Tensor], ratio: float) -> dict:
    rho_sum = weight = 0.0
    inter = size = 0
    for a, b in zip(emas_a, emas_b):
        rho, n = spearman(a, b)
        if n:
            rho_sum, weight = rho_sum + rho * n, weight + n
        top_a, top_b = top_k_indices(a, ratio).indices, top_k_indices(b, ratio).indices
        if top_a.numel():
            inter += int(torch.isin(top_a, top_b).sum())
            size += top_a.numel()
    return {"spearman": rho_sum / max(weight, 1.0), "mask_overlap": inter / max(size, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", str(ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--steps-per-task", type=int, default=48)
    parser.add_argument("--refresh", type=int, default=8, help="task steps between two compared refreshes")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--decay", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from sft_core.hub import load_encoder, load_tokenizer

    started = time.time()
    profile = dict(PROFILES["fast"])
    tokenizer = load_tokenizer(profile["model"])
    data = load_tasks(Path(args.data_root) / "sft", profile["tasks"], args.steps_per_task * profile["batch_size"],
                      profile["eval_per_task"], seed=args.seed)
    bench = Bench(profile, data, tokenizer, args.seed)
    model = MultiHeadClassifier(load_encoder(profile["model"]), bench.tasks,
                                {t: len(data[t][2]) for t in bench.tasks}, seed=args.seed)
    freeze_lower(model, profile["frozen_blocks"])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    units = [p.numel() for p in params]
    optimizer = torch.optim.AdamW(params, lr=profile["lr"], weight_decay=0.0)
    accumulator = ImportanceAccumulator(get_estimator("fisher"), "element", args.decay, torch.float32)
    emas = {(task, label): accumulator.new_emas(units, params) for task in bench.tasks for label, _, _ in VARIANTS}
    items = {t: [i for i in bench.train_items if i["task"] == t] for t in bench.tasks}
    batch_size = profile["batch_size"]

    comparisons = []
    previous_k1: dict[str, list[torch.Tensor]] = {}
    for task_step in range(1, args.steps_per_task + 1):
        for task in bench.tasks:  # mixed schedule: one step of each task in turn
            chunk = items[task][(task_step - 1) * batch_size:task_step * batch_size]
            batch = bench.collate([{k: v for k, v in i.items() if k != "task"} for i in chunk])
            model(**batch)["loss"].backward()
            grads = [p.grad for p in params]
            for label, k, phase in VARIANTS:
                if (task_step - 1) % k == phase:
                    accumulator.update(emas[(task, label)], params, grads)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if task_step >= 2 * args.refresh and task_step % args.refresh == 0:
                reference = emas[(task, "k=1")]
                row = {"task": task, "task_step": task_step}
                for label, _, _ in VARIANTS[1:4]:
                    row[label] = compare(emas[(task, label)], reference, args.ratio)
                row["reference: k=4 vs k=4 shifted by 2"] = compare(emas[(task, "k=4, shifted by 2")],
                                                                    emas[(task, "k=4")], args.ratio)
                if task in previous_k1:
                    row["reference: k=1 vs k=1 one refresh earlier"] = compare(reference, previous_k1[task], args.ratio)
                comparisons.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            if task_step >= args.refresh and task_step % args.refresh == 0:
                previous_k1[task] = [e.clone() for e in emas[(task, "k=1")]]

    labels = [label for label, _, _ in VARIANTS[1:4]] + ["reference: k=4 vs k=4 shifted by 2",
                                                         "reference: k=1 vs k=1 one refresh earlier"]
    summary = {}
    for label in labels:
        rows = [row[label] for row in comparisons if label in row]
        summary[label] = {metric: {"median": statistics.median(r[metric] for r in rows),
                                   "min": min(r[metric] for r in rows)} for metric in ("spearman", "mask_overlap")}
        summary[label]["n"] = len(rows)
    report = {
        "command": "python benchmarks/epi_importance_interval.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, {args.threads} torch thread(s)",
        "model": profile["model"], "tasks": bench.tasks, "trainable_params": sum(units),
        "steps_per_task": args.steps_per_task, "refresh_every": args.refresh, "ratio": args.ratio,
        "ema_decay": args.decay, "seed": args.seed, "lr": profile["lr"], "batch_size": batch_size,
        "summary": summary, "comparisons": comparisons, "wall_seconds": time.time() - started,
    }
    out_dir = Path(args.out_dir)
    atomic_write_text(out_dir / "epi_importance_interval.json", json.dumps(report, indent=1))
    lines = [
        "# Importance every k-th step: what it costs in importance quality", "",
        f"Command: `{report['command']}`", "",
        f"{profile['model']} with per-task heads ({sum(units) / 1e6:.1f}M trainable parameters, the `fast` profile of "
        f"epi_quality.py), tasks {', '.join(bench.tasks)} in a mixed round-robin stream, {args.steps_per_task} AdamW "
        f"steps per task (lr {profile['lr']}, batch {batch_size}), seed {args.seed}. One fisher EMA (decay "
        f"{args.decay} per update, fp32) per task and variant, "
        f"all fed from the same gradients; compared at every {args.refresh}th step of a task from step "
        f"{2 * args.refresh} on ({summary[labels[0]]['n']} task x refresh points). Mask = top {args.ratio:.0%} "
        f"of each tensor. Machine: {report['machine']}; {report['wall_seconds'] / 60:.1f} min.", "",
        "| importance EMA compared with k=1 (every step) | Spearman, median | Spearman, min | mask overlap, median "
        "| mask overlap, min |", "|---|---|---|---|---|"]
    for label in labels:
        s = summary[label]
        lines.append(f"| {label} | {s['spearman']['median']:.3f} | {s['spearman']['min']:.3f} | "
                     f"{s['mask_overlap']['median']:.3f} | {s['mask_overlap']['min']:.3f} |")
    lines += ["", "Spearman: per tensor over the units where either EMA is non-zero, mean weighted by units. "
              "Mask overlap: |A and B| / |A| of the top-ratio masks. The two reference rows are not against k=1: "
              "they compare two equally valid k=4 samplings, and k=1 with itself one refresh earlier."]
    atomic_write_text(out_dir / "epi_importance_interval.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
