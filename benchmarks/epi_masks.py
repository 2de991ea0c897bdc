"""EPI mask diagnostics on real gradients (minilm-l6, the tasks of `epi_quality.py --profile fast`):

1. Importance storage: the share of units with a non-zero accumulated saliency whose *stored* importance
   is exactly 0, for the old scheme (per-tensor max-normalised, fp16) and the current one (mean-normalised,
   bf16), from the same gradients.
2. Estimator separation: mask overlap between tasks (|A and B| / min(|A|, |B|), mean over task pairs)
   for every importance estimator x selection score, from the same per-task gradients.
3. Overlap rule: SST-2 then AG News (World/Business), `share` vs `freeze`: the fraction of SST-2's mask
   that moved while AG News trained, and SST-2's accuracy / AUC before and after.

    python benchmarks/epi_masks.py
Writes docs/results/epi_masks.{json,md}.
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

from epi_quality import (PROFILES, Bench, MultiHeadClassifier, evaluate_task, freeze_lower,  # noqa: E402
                         load_tasks)
from sft_core.atomic_io import atomic_write_text  # noqa: E402
from sft_core.epi import EPIConfig, attach_epi  # noqa: E402
from sft_core.epi.importance import ImportanceAccumulator, estimator_names, get_estimator  # noqa: E402
from sft_core.epi.masks import top_k_mask  # noqa: E402
from sft_core.epi.selection import selection_scores  # noqa: E402


def batches_of(bench, task, steps, batch_size):
    items = [i for i in bench.train_items if i["task"] == task]
    for step in range(steps):
        chunk = items[step * batch_size:(step + 1) * batch_size]
        yield bench.collate([{k: v for k, v in i.items() if k != "task"} for i in chunk])


def gradients(model, params, batch):
    loss = model(**batch)["loss"]
    return [None if g is None else g.detach() for g in torch.autograd.grad(loss, params, allow_unused=True)]


class _State:
    def __init__(self, importance):
        self.importance = importance


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", str(ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--steps", type=int, default=8, help="gradient steps per task for parts 1 and 2")
    parser.add_argument("--stage-steps", type=int, default=24, help="steps per stage for part 3")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from sft_core.hub import load_encoder, load_tokenizer

    started = time.time()
    profile = dict(PROFILES["fast"])
    tokenizer = load_tokenizer(profile["model"])
    data = load_tasks(Path(args.data_root) / "sft", profile["tasks"], 400, profile["eval_per_task"], seed=0)
    bench = Bench(profile, data, tokenizer, 0)

    def fresh_model():
        model = MultiHeadClassifier(load_encoder(profile["model"]), bench.tasks,
                                    {t: len(data[t][2]) for t in bench.tasks}, seed=0)
        freeze_lower(model, profile["frozen_blocks"])
        return model

    model = fresh_model()
    model.eval()  # no dropout: the same gradients for every estimator
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    units = [p.numel() for p in params]
    report = {"command": "python benchmarks/epi_masks.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, 1 torch thread",
              "steps_per_task": args.steps, "ratio": args.ratio, "trainable_params": sum(units)}

    # ---- 1 + 2: per-task gradients at the base weights
    grads = {t: [gradients(model, params, b) for b in batches_of(bench, t, args.steps, profile["batch_size"])]
             for t in bench.tasks}
    decay = 0.9
    storage = {}
    for label, dtype in (("old: max-normalised fp16", torch.float16), ("new: mean-normalised bf16", torch.bfloat16)):
        zero_with_evidence = evidence = 0
        for task in bench.tasks:
            if label.startswith("old"):
                emas = [torch.zeros(n, dtype=dtype) for n in units]
                for step_grads in grads[task]:
                    for ema, g in zip(emas, step_grads):
                        if g is None:
                            continue
                        s = g.reshape(-1).float().square()
                        peak = float(s.max())
                        if peak > 0:
                            ema.copy_((ema.float() * decay + s * ((1 - decay) / peak)).to(dtype))
            else:
                accumulator = ImportanceAccumulator(get_estimator("fisher"), "element", decay, dtype)
                emas = accumulator.new_emas(units, params)
                for step_grads in grads[task]:
                    accumulator.update(emas, params, step_grads)
            for ema, i in zip(emas, range(len(units))):
                has_evidence = torch.zeros(units[i], dtype=torch.bool)
                for step_grads in grads[task]:
                    if step_grads[i] is not None:
                        has_evidence |= step_grads[i].reshape(-1) != 0
                evidence += int(has_evidence.sum())
                zero_with_evidence += int(((ema == 0) & has_evidence).sum())
        storage[label] = zero_with_evidence / max(1, evidence)
        print(f"{label}: {storage[label]:.4f} of units with a gradient stored as 0", file=sys.stderr, flush=True)
    report["zero_importance_fraction"] = storage

    separation = {}
    for estimator in estimator_names():
        accumulator = ImportanceAccumulator(get_estimator(estimator), "element", decay, torch.float32)
        states = {}
        for task in bench.tasks:
            emas = accumulator.new_emas(units, params)
            for step_grads in grads[task]:
                accumulator.update(emas, params, step_grads)
            states[task] = _State(emas)
        for score in ("importance", "specificity"):
            masks = {t: [top_k_mask(selection_scores(score, states[t], states.values(), i), args.ratio)
                         for i in range(len(units))] for t in bench.tasks}
            overlaps = []
            for a_index, a in enumerate(bench.tasks):
                for b in bench.tasks[a_index + 1:]:
                    inter = sum(int((x & y).sum()) for x, y in zip(masks[a], masks[b]))
                    size = min(sum(int(x.sum()) for x in masks[a]), sum(int(y.sum()) for y in masks[b]))
                    overlaps.append(inter / max(1, size))
            separation[f"{estimator}/{score}"] = sum(overlaps) / len(overlaps)
            print(f"overlap {estimator}/{score}: {separation[f'{estimator}/{score}']:.3f}", file=sys.stderr, flush=True)
    report["mask_overlap"] = separation
    report["random_mask_overlap_expected"] = args.ratio
    del grads

    # ---- 3: overlap rule, sequential SST-2 -> AG News (World/Business)
    rules = {}
    for overlap in ("share", "freeze"):
        torch.manual_seed(0)
        model = fresh_model()
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=profile["lr"],
                                      weight_decay=0.0)
        config = EPIConfig(method="epi", isolation_ratio=args.ratio, warmup_steps=8, update_interval=8,
                           overlap=overlap, replay_batches=0)
        isolator = attach_epi(model, optimizer, config)
        first, second = bench.tasks[0], bench.tasks[1]
        for batch in batches_of(bench, first, args.stage_steps, profile["batch_size"]):
            model(**batch)["loss"].backward()
            isolator.step(first)
            optimizer.zero_grad()
        after_first = evaluate_task(model, bench.collate, bench.eval_items[first])
        snapshot = {n: (isolator.mask(first, n).expand_as(p).clone(), p.detach().clone())
                    for n, p in zip(isolator.param_names, isolator.params)}
        for batch in batches_of(bench, second, args.stage_steps, profile["batch_size"]):
            model(**batch)["loss"].backward()
            isolator.step(second)
            optimizer.zero_grad()
        after_second = evaluate_task(model, bench.collate, bench.eval_items[first])
        moved = total = 0
        for name, param in zip(isolator.param_names, isolator.params):
            mask, before = snapshot[name]
            moved += int((param.detach()[mask] != before[mask]).sum())
            total += int(mask.sum())
        rules[overlap] = {"mask_overlap": isolator.mask_overlap(first, second)["overlap"],
                          "first_task_mask_moved": moved / max(1, total),
                          "first_task_after_own_stage": after_first, "first_task_after_second_stage": after_second}
        print(f"{overlap}: {rules[overlap]}", file=sys.stderr, flush=True)
    report["overlap_rule"] = rules
    report["wall_seconds"] = time.time() - started

    out_dir = Path(args.out_dir)
    atomic_write_text(out_dir / "epi_masks.json", json.dumps(report, indent=1))
    lines = ["# EPI mask diagnostics", "", f"Command: `{report['command']}`", "",
             f"minilm-l6 with per-task heads ({report['trainable_params'] / 1e6:.1f}M trainable parameters, the "
             f"`fast` profile of epi_quality.py), tasks {', '.join(bench.tasks)}, batch {profile['batch_size']}, "
             f"ratio {args.ratio}. Machine: {report['machine']}; {report['wall_seconds'] / 60:.1f} min.", "",
             f"## Importance storage ({args.steps} steps per task, EMA 0.9)", "",
             "| scheme | units with a gradient whose stored importance is exactly 0 |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in storage.items()]
    lines += ["", f"## Mask overlap between tasks ({args.steps} gradient steps per task at the base weights; "
              f"a random mask would overlap {args.ratio:.2f})", "",
              "| estimator / selection score | mean overlap |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in separation.items()]
    lines += ["", f"## Overlap rule ({args.stage_steps} steps of {bench.tasks[0]}, then {args.stage_steps} of "
              f"{bench.tasks[1]}, lr {profile['lr']}, epi refresh every 8 steps, no replay)", "",
              f"| rule | mask overlap | {bench.tasks[0]} mask moved during stage 2 | {bench.tasks[0]} acc / AUC after "
              "its stage | after stage 2 |", "|---|---|---|---|---|"]
    for rule, r in rules.items():
        a, b = r["first_task_after_own_stage"], r["first_task_after_second_stage"]
        lines.append(f"| {rule} | {r['mask_overlap']:.3f} | {r['first_task_mask_moved']:.3f} | "
                     f"{a['acc']:.3f} / {a['auc']:.3f} | {b['acc']:.3f} / {b['auc']:.3f} |")
    atomic_write_text(out_dir / "epi_masks.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
