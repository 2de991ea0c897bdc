"""Task separation of `fisher_mb` (per-micro-batch squared gradients) against `fisher` (square of the
step's mean gradient), on real gradients of minilm-l6 and the shared SFT classification tasks.

    python benchmarks/epi_fisher_mb.py

The tasks and model of `epi_quality.py --profile fast` (SST-2 and two AG News pairs, per-task heads,
lowest 2 blocks frozen), at the base weights (no optimizer step, eval mode: every estimator sees the same
gradients). Every step is a batch of 8 examples run as `8 / micro` micro-batches through `attach_epi`'s
real step protocol (backward per micro-batch, then `before_step`), so `fisher_mb` sees per-micro-batch
gradients through its hooks; micro = 8 is one backward, where `fisher_mb` equals `fisher`. Each task's
importance is estimated twice, on two disjoint halves of its data (`--steps` steps each), and masks are
the top `ratio` of every tensor:

- between tasks: |A and B| / min(|A|, |B|) of two tasks' masks from the same half, mean over task pairs
  and halves (lower = masks more task-specific; a random mask overlaps `ratio`);
- within a task: the same overlap between the task's two halves (higher = the estimator finds the same
  units on fresh data of the task: separation that is signal, not noise).
Writes docs/results/epi_fisher_mb.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from epi_quality import PROFILES, Bench, MultiHeadClassifier, freeze_lower, load_tasks  # noqa: E402
from sft_core.atomic_io import atomic_write_text  # noqa: E402
from sft_core.epi import EPIConfig, attach_epi  # noqa: E402
from sft_core.epi.masks import top_k_indices  # noqa: E402
from sft_core.epi.selection import selection_scores  # noqa: E402

VARIANTS = [("fisher", 8), ("fisher_mb", 4), ("fisher_mb", 2), ("fisher_mb", 1)]


def overlap(masks_a, masks_b) -> float:
    inter = sum(int(torch.isin(a, b).sum()) for a, b in zip(masks_a, masks_b))
    size = min(sum(a.numel() for a in masks_a), sum(b.numel() for b in masks_b))
    return inter / max(1, size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", str(ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--steps", type=int, default=8, help="steps of 8 examples per task and half")
    parser.add_argument("--ratios", default="0.1,0.2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from sft_core.hub import load_encoder, load_tokenizer

    started = time.time()
    ratios = [float(r) for r in args.ratios.split(",")]
    profile = dict(PROFILES["fast"])
    batch_size = profile["batch_size"]
    tokenizer = load_tokenizer(profile["model"])
    data = load_tasks(Path(args.data_root) / "sft", profile["tasks"], 2 * args.steps * batch_size,
                      profile["eval_per_task"], seed=args.seed)
    bench = Bench(profile, data, tokenizer, args.seed)
    model = MultiHeadClassifier(load_encoder(profile["model"]), bench.tasks,
                                {t: len(data[t][2]) for t in bench.tasks}, seed=args.seed)
    freeze_lower(model, profile["frozen_blocks"])
    model.eval()  # no dropout: every estimator sees the same gradients
    items = {t: [{k: v for k, v in i.items() if k != "task"} for i in bench.train_items if i["task"] == t]
             for t in bench.tasks}
    halves = ("h1", "h2")

    results = []
    for saliency, micro in VARIANTS:
        isolator = attach_epi(model, None, EPIConfig(method="epi", saliency=saliency, warmup_steps=10 ** 9,
                                                     importance_interval=1, replay_batches=0))
        for task in bench.tasks:
            for half_index, half in enumerate(halves):
                name = f"{task}/{half}"
                for step in range(args.steps):
                    start = (half_index * args.steps + step) * batch_size
                    batch = items[task][start:start + batch_size]
                    for m in range(0, batch_size, micro):
                        loss = model(**bench.collate(batch[m:m + micro]))["loss"] * (len(batch[m:m + micro]) / len(batch))
                        loss.backward()
                    isolator.before_step(name)
                    isolator.after_step(name)
                    model.zero_grad(set_to_none=True)
        states = isolator.tasks
        for score in ("importance", "specificity"):
            for ratio in ratios:
                def masks(name):
                    # specificity: relative to the other tasks' estimates from the same half
                    half = name.split("/")[1]
                    peers = [s for n, s in states.items() if n.endswith(half)]
                    return [top_k_indices(selection_scores(score, states[name], peers, i), ratio).indices
                            for i in range(len(isolator.params))]

                per = {name: masks(name) for name in states}
                between = [overlap(per[f"{a}/{h}"], per[f"{b}/{h}"]) for h in halves
                           for ai, a in enumerate(bench.tasks) for b in bench.tasks[ai + 1:]]
                within = [overlap(per[f"{t}/h1"], per[f"{t}/h2"]) for t in bench.tasks]
                row = {"estimator": saliency, "micro_batch": micro, "selection_score": score, "ratio": ratio,
                       "between_tasks": sum(between) / len(between), "within_task": sum(within) / len(within),
                       "between_pairs": between, "within_per_task": within}
                results.append(row)
                print(json.dumps({k: v for k, v in row.items() if not k.endswith(("pairs", "per_task"))}),
                      file=sys.stderr, flush=True)
        isolator.close()

    report = {"command": "python benchmarks/epi_fisher_mb.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, 1 torch thread",
              "model": profile["model"], "tasks": bench.tasks, "steps_per_half": args.steps, "batch_size": batch_size,
              "seed": args.seed, "results": results, "wall_seconds": time.time() - started}
    out_dir = Path(args.out_dir)
    atomic_write_text(out_dir / "epi_fisher_mb.json", json.dumps(report, indent=1))
    lines = ["# fisher_mb (per-micro-batch squared gradients) vs fisher: task separation", "",
             f"Command: `{report['command']}`", "",
             f"{profile['model']} with per-task heads (`fast` profile of epi_quality.py), tasks "
             f"{', '.join(bench.tasks)}, at the base weights; per task two disjoint halves of {args.steps} steps x "
             f"{batch_size} examples, each step run as 8 / micro micro-batches through attach_epi (default bf16 EMA, "
             f"decay 0.9, updated on every step), seed {args.seed}. Machine: {report['machine']}; {report['wall_seconds'] / 60:.1f} min.", "",
             "Between tasks: mask overlap of two tasks (same half), mean over pairs; a random mask overlaps the ratio. "
             "Within a task: overlap of the task's masks from its two halves.", "",
             "| estimator | micro-batch | selection | ratio | between tasks (lower: more separated) "
             "| within a task (higher: reproducible) |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['estimator']} | {r['micro_batch']} | {r['selection_score']} | {r['ratio']} | "
                     f"{r['between_tasks']:.3f} | {r['within_task']:.3f} |")
    atomic_write_text(out_dir / "epi_fisher_mb.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
