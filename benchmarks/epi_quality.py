"""EPI quality: forgetting (sequential schedule) and interference (mixed schedule) for full fine-tuning,
static isolation, EPI and a random-mask control, through `MultiTaskTrainer` (the entry point users call).

    python benchmarks/epi_quality.py --profile fast            # minilm-l6, 3 seeds, CPU
    python benchmarks/epi_quality.py --profile quality --device cuda --jobs 8 --time-budget 400
                                                               # smollm2-135m, 3 seeds, one GPU
    python benchmarks/epi_quality.py --profile quality --merge-from OTHER.json   # add runs made elsewhere

Profile `quality` (docs/results/epi_quality.*, the issue's summary): smollm2-135m fine-tuned whole as a
chat model on SST-2, AG News (4-way) and GSM8K; tasks, scoring and probe in benchmarks/epi_lm_tasks.py.
`--jobs N` trains N runs at once in worker processes (one GPU shared); `--time-budget` starts no run that
the median finished run says cannot end in time (the rest are listed under `not_run`); runs are queued
sequential schedule first, and with `--summary-ratios-only` every seed of the summary ratio before the
other ratios. `smoke-lm` is the same code path with a tiny budget (CPU check).

Profile `fast` (docs/results/epi_quality_fast.*): minilm-l6 (word embeddings and the lowest 2 of 6 blocks frozen) with one linear head
per task on mean-pooled token states. Tasks (from --data-root/sft): SST-2 sentiment (train: phrase-level
train.tsv, sentences of >= 6 words; eval: test.tsv), and AG News split into two binary topic tasks with
disjoint labels: `agnews_wb` (World vs Business) and `agnews_ss` (Sports vs Sci/Tech), trained on a seeded
sample of dev.tsv and evaluated on test.tsv. All samples are label-balanced; every task has exactly
`steps_per_task` batches of training data, so a sequential run's stage boundaries fall at multiples of
`steps_per_task` (a TrainerCallback evaluates there).

Per run and task: accuracy, ROC AUC of the head's logit margin (threshold-free: separates a shifted
decision threshold from lost ranking), forgetting (sequential: right after the task's own stage minus
final, for accuracy and AUC), the general-ability probe NLL (in-batch retrieval cross-entropy of
CodeAlpaca instruction -> its own output among the probe's pairs, cosine / 0.05, the sentence encoder's
own kind of objective; its rise from the base model = lost general ability), the mask overlap between
tasks (|A and B| / min(|A|, |B|)), the fraction of a task's mask units whose value changed while later
tasks trained (sequential), and wall time. Paired differences between methods use the same seed (same
data, head initialisation and batch order); 95% t-intervals over seeds.
Writes docs/results/<report>.{json,md} (the profile's report name, or --report-name).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # epi_lm_tasks beside this file

from sft_core.atomic_io import atomic_write_text  # noqa: E402
from sft_core.epi import EPIConfig  # noqa: E402
from sft_core.nn_utils import mean_pool  # noqa: E402
from epi_lm_tasks import balanced_sample, read_tsv  # noqa: E402  (shared TSV sampling)

METHODS = ("full", "static", "epi", "random")
PROFILES = {
    # sized for 2 CPU cores shared by ~7 jobs: word embeddings and the lowest 2 of 6 blocks frozen (the
    # backward stops at block 2), short inputs, small batches
    "fast": dict(model="minilm-l6", tasks=("sst2", "agnews_wb", "agnews_ss"), steps_per_task=24, batch_size=8,
                 lr=4e-4, max_length=32, eval_per_task=200, probe_pairs=100, seeds=(0, 1, 2), frozen_blocks=2,
                 ratios=(0.1, 0.2, 0.5), summary_ratio=0.2, warmup_steps=8, update_interval=8, probe_steps=8,
                 release_patience=2, replay_batches=2, kind="encoder", report_name="epi_quality_fast"),
    # the smollm2-135m profile of the issue, sized for one GPU (all 30 blocks and the embeddings trainable)
    "quality": dict(model="smollm2-135m", tasks=("sst2", "agnews", "gsm8k"), steps_per_task=120, batch_size=8,
                    lr=5e-5, max_length=384, eval_per_task=200, probe_pairs=100, seeds=(0, 1, 2), frozen_blocks=0,
                    ratios=(0.1, 0.2, 0.5), summary_ratio=0.2, warmup_steps=10, update_interval=20, probe_steps=10,
                    release_patience=2, replay_batches=2, eval_batch_size=16, kind="lm", report_name="epi_quality"),
    # the same code path on the real smollm2 weights with a tiny budget (CPU smoke test)
    "smoke-lm": dict(model="smollm2-135m", tasks=("sst2", "agnews", "gsm8k"), steps_per_task=2, batch_size=2,
                     lr=3e-5, max_length=96, eval_per_task=4, probe_pairs=4, seeds=(0,), frozen_blocks=0,
                     ratios=(0.2,), summary_ratio=0.2, warmup_steps=1, update_interval=2, probe_steps=1,
                     release_patience=2, replay_batches=1, eval_batch_size=4, kind="lm",
                     report_name="epi_quality_smoke"),
}
AGNEWS_TASKS = {"agnews_wb": ("World", "Business"), "agnews_ss": ("Sports", "Sci/Tech")}
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


# ---------------------------------------------------------------------------------------------- data
def load_tasks(root: Path, tasks, n_train: int, n_eval: int, seed: int):
    """task -> (train rows, eval rows, label names); rows are (text, label index)."""
    rng = random.Random(seed)
    out = {}
    for task in tasks:
        if task == "sst2":
            train = [(r[0], r[1].strip()) for r in read_tsv(root / "sst2" / "train.tsv", True)
                     if len(r) == 2 and len(r[0].split()) >= 6]
            test = [(r[0], r[1].strip()) for r in read_tsv(root / "sst2" / "test.tsv", True) if len(r) == 2]
            names = ["0", "1"]
        else:
            names = list(AGNEWS_TASKS[task])
            train = [(r[0], r[1].strip()) for r in read_tsv(root / "agnews" / "dev.tsv", False)
                     if len(r) == 2 and r[1].strip() in names]
            test = [(r[0], r[1].strip()) for r in read_tsv(root / "agnews" / "test.tsv", False)
                    if len(r) == 2 and r[1].strip() in names]
        index = {name: i for i, name in enumerate(names)}
        out[task] = ([(t, index[y]) for t, y in balanced_sample(rng, train, n_train)],
                     [(t, index[y]) for t, y in balanced_sample(rng, test, n_eval)],
                     ["negative", "positive"] if task == "sst2" else names)
    return out


def load_probe_pairs(root: Path, n: int, seed: int):
    records = json.loads((root / "codealpaca" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    chosen = random.Random(seed + 7).sample(records, n)
    return [(r["instruction"] + (" " + r["input"] if r["input"] else ""), r["output"]) for r in chosen]


# ---------------------------------------------------------------------------------------------- model
class MultiHeadClassifier(torch.nn.Module):
    """Sentence encoder + one linear head per task; a batch is one task (``task_id``, same in every row)."""

    def __init__(self, encoder, tasks, num_labels, seed: int):
        super().__init__()
        self.encoder = encoder
        self.tasks = list(tasks)
        generator = torch.Generator().manual_seed(seed)
        self.heads = torch.nn.ModuleDict()
        hidden = encoder.config.hidden_size
        for task in self.tasks:
            head = torch.nn.Linear(hidden, num_labels[task])
            with torch.no_grad():
                head.weight.normal_(0.0, 0.02, generator=generator)
                head.bias.zero_()
            self.heads[task] = head

    def embed(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def forward(self, input_ids, attention_mask, task_id, labels=None):
        task = self.tasks[int(task_id[0])]
        logits = self.heads[task](self.embed(input_ids, attention_mask))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


class Collate:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items):
        longest = max(len(i["input_ids"]) for i in items)
        input_ids = torch.full((len(items), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, :len(item["input_ids"])] = torch.tensor(item["input_ids"])
            attention_mask[row, :len(item["input_ids"])] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": torch.tensor([i["labels"] for i in items]),
                "task_id": torch.tensor([i["task_id"] for i in items])}


def encode(tokenizer, texts, max_length):
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


# ---------------------------------------------------------------------------------------------- metrics
def roc_auc(scores, labels) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


@torch.no_grad()
def evaluate_task(model, collate, eval_items, batch_size=64):
    was_training = model.training
    model.eval()
    margins, labels, correct = [], [], 0
    for start in range(0, len(eval_items), batch_size):
        batch = collate(eval_items[start:start + batch_size])
        device = next(model.parameters()).device
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                       batch["task_id"])["logits"].float().cpu()
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
        margins += (logits[:, 1] - logits[:, 0]).tolist()
        labels += batch["labels"].tolist()
    model.train(was_training)
    positive_share = sum(m > 0 for m in margins) / len(margins)
    return {"acc": correct / len(eval_items), "auc": roc_auc(margins, labels), "predicted_positive": positive_share}


@torch.no_grad()
def probe_nll(model, tokenizer, pairs, max_length, batch_size=50, temperature=0.05):
    """Mean cross-entropy of retrieving each instruction's own output among all probe outputs."""
    was_training = model.training
    model.eval()

    def embed(texts):
        vectors = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length,
                            padding=True, return_tensors="pt")
            device = next(model.parameters()).device
            embedded = model.embed(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float().cpu()
            vectors.append(torch.nn.functional.normalize(embedded, dim=-1))
        return torch.cat(vectors)

    queries, documents = embed([q for q, _ in pairs]), embed([d for _, d in pairs])
    logits = queries @ documents.T / temperature
    model.train(was_training)
    return float(torch.nn.functional.cross_entropy(logits, torch.arange(len(pairs))))


def mean_ci(values):
    values = [v for v in values if v is not None]
    n = len(values)
    if n == 0:
        return None, [None, None]
    mean = sum(values) / n
    if n == 1:
        return mean, [None, None]
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_95.get(n - 1, 1.96) * sd / math.sqrt(n)
    return mean, [mean - half, mean + half]


# ---------------------------------------------------------------------------------------------- one run
class StageCallback:
    """At each stage boundary (sequential) evaluate the tasks seen so far, snapshot the finished task's mask
    and weights, and measure how much of earlier tasks' masks moved since their stage ended."""

    def __new__(cls, *args, **kwargs):  # a TrainerCallback subclass created lazily (transformers import)
        from transformers import TrainerCallback

        class _StageCallback(TrainerCallback):
            def __init__(self, bench, schedule):
                self.bench, self.schedule = bench, schedule
                self.trainer = None
                self.stages, self.snapshots, self.moved = {}, {}, {}
                self.eval_seconds = 0.0

            def on_step_end(self, args, state, control, **kwargs):
                bench = self.bench
                if self.schedule != "sequential" or state.global_step % bench.steps_per_task:
                    return
                stage = state.global_step // bench.steps_per_task
                task = bench.tasks[stage - 1]
                started = time.time()
                self.stages[task] = {t: bench.evaluate(t) for t in bench.tasks[:stage]}
                self.eval_seconds += time.time() - started
                isolator = self.trainer.isolator
                if isolator is not None and isolator.tasks.get(task) is not None:
                    named = dict(zip(isolator.param_names, isolator.params))
                    self.snapshots[task] = {n: (isolator.mask(task, n).expand_as(p).clone(), p.detach().clone())
                                            for n, p in named.items() if isolator.mask(task, n).any()}

        return _StageCallback(*args, **kwargs)


class Bench:
    def __init__(self, profile, data, tokenizer, seed):
        self.tasks = list(profile["tasks"])
        self.steps_per_task = profile["steps_per_task"]
        self.collate = Collate(tokenizer.pad_token_id)
        self.eval_items, self.train_items = {}, []
        for task_id, task in enumerate(self.tasks):
            train, evaluation, _ = data[task]
            ids = encode(tokenizer, [t for t, _ in train], profile["max_length"])
            self.train_items += [{"input_ids": i, "labels": y, "task_id": task_id, "task": task}
                                 for i, (_, y) in zip(ids, train)]
            ids = encode(tokenizer, [t for t, _ in evaluation], profile["max_length"])
            self.eval_items[task] = [{"input_ids": i, "labels": y, "task_id": task_id}
                                     for i, (_, y) in zip(ids, evaluation)]
        self.model = None
        self.tokenizer, self.max_length, self.probe_pairs = tokenizer, profile["max_length"], None
        self.data_collator = self.collate

    def evaluate(self, task: str) -> dict:
        return evaluate_task(self.model, self.collate, self.eval_items[task])

    def probe(self) -> float:
        return probe_nll(self.model, self.tokenizer, self.probe_pairs, self.max_length)


def freeze_lower(model, blocks: int) -> None:
    """Word embeddings and the lowest ``blocks`` transformer blocks stay fixed (profile budget)."""
    encoder = model.encoder
    encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    if blocks > 0:
        for module in [encoder.embeddings, *encoder.encoder.layer[:blocks]]:
            for param in module.parameters():
                param.requires_grad_(False)


def epi_config(method, ratio, profile):
    # "epi-spec": EPI ranking task-specificity instead of raw importance (selection.py)
    selection = "specificity" if method == "epi-spec" else "importance"
    # importance from every step: the setting every published run of this benchmark used
    return EPIConfig(method=method.replace("-spec", ""), selection_score=selection, isolation_ratio=ratio,
                     importance_interval=profile.get("importance_interval", 1), warmup_steps=profile["warmup_steps"],
                     update_interval=profile["update_interval"], probe_steps=profile["probe_steps"],
                     release_patience=profile["release_patience"], replay_batches=profile["replay_batches"])


def run_one(method, ratio, schedule, seed, profile, bench, make_model, work_dir, device="cpu"):
    """Train one (method, ratio, schedule, seed) through MultiTaskTrainer and measure it."""
    from sft_core.trainer import MultiTaskTrainer, MultiTaskTrainingArguments

    torch.manual_seed(seed)
    model = make_model()
    bench.model = model
    args = MultiTaskTrainingArguments(
        output_dir=str(work_dir / f"{schedule}-{method}-{ratio}-{seed}"), task_schedule=schedule,
        task_proportions={t: 1.0 for t in bench.tasks}, per_device_train_batch_size=profile["batch_size"],
        learning_rate=profile["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_steps=len(bench.tasks) * bench.steps_per_task, save_strategy="no", logging_steps=10_000,
        report_to=[], use_cpu=device == "cpu", seed=seed, data_seed=seed, dataloader_num_workers=0,
        disable_tqdm=True, remove_unused_columns=False)
    callback = StageCallback(bench, schedule)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=bench.train_items,
                               data_collator=bench.data_collator, epi_config=epi_config(method, ratio, profile),
                               callbacks=[callback])
    callback.trainer = trainer
    started = time.time()
    trainer.train()
    train_seconds = time.time() - started - callback.eval_seconds
    if schedule == "sequential":  # the last stage's evaluation is the final one
        final = callback.stages[bench.tasks[-1]]
    else:
        final = {t: bench.evaluate(t) for t in bench.tasks}
    aucs = [final[t]["auc"] for t in bench.tasks if final[t].get("auc") is not None]
    calibrated = [final[t]["calibrated_acc"] for t in bench.tasks if final[t].get("calibrated_acc") is not None]
    record = {"method": method, "ratio": None if method == "full" else ratio, "schedule": schedule, "seed": seed,
              "steps": trainer.state.global_step, "train_seconds": round(train_seconds, 1),
              "eval_seconds": round(callback.eval_seconds, 1),
              "final": final, "mean_accuracy": sum(final[t]["acc"] for t in bench.tasks) / len(bench.tasks),
              "mean_auc": sum(aucs) / len(aucs) if aucs else None,
              "mean_calibrated_accuracy": sum(calibrated) / len(calibrated) if calibrated else None,
              "probe_nll": bench.probe()}
    if schedule == "sequential":
        earlier = bench.tasks[:-1]
        record["stages"] = callback.stages

        def drop(metric):
            values = {t: callback.stages[t][t][metric] - final[t][metric] for t in earlier
                      if callback.stages[t][t].get(metric) is not None and final[t].get(metric) is not None}
            return values, (sum(values.values()) / len(values) if values else None)

        record["forgetting"], record["mean_forgetting"] = drop("acc")
        record["forgetting_auc"], record["mean_forgetting_auc"] = drop("auc")
        record["forgetting_calibrated"], record["mean_forgetting_calibrated"] = drop("calibrated_acc")
        moved = {}
        for task, snapshot in callback.snapshots.items():
            if task == bench.tasks[-1]:
                continue
            named = dict(model.named_parameters())
            changed = total = 0
            for name, (mask, before) in snapshot.items():
                param = named[name].detach()
                changed += int((param[mask] != before[mask]).sum())
                total += int(mask.sum())
            moved[task] = changed / max(1, total)
        record["mask_moved_fraction"] = moved or None
    isolator = trainer.isolator
    if isolator is not None:
        pairs = [(a, b) for i, a in enumerate(bench.tasks) for b in bench.tasks[i + 1:]
                 if isolator.tasks.get(a) and isolator.tasks.get(b) and isolator.tasks[a].has_mask
                 and isolator.tasks[b].has_mask]
        record["mask_overlap"] = {f"{a}|{b}": round(isolator.mask_overlap(a, b)["overlap"], 4) for a, b in pairs}
        record["protected_fraction"] = {t: sum(s.protected_counts) / sum(isolator.units)
                                        for t, s in isolator.tasks.items()}
        record["replays"] = {t: s.replays for t, s in isolator.tasks.items()}
        nbytes = isolator.state_nbytes()
        record["epi_state_bytes_per_param_task"] = nbytes["persistent_total"] / sum(isolator.units) / len(isolator.tasks)
        isolator.close()
    print(f"[{schedule}/{method}/r={ratio}/seed {seed}] acc " + " ".join(f"{t} {final[t]['acc']:.3f}" for t in bench.tasks)
          + (f" forgetting {record['mean_forgetting']:+.3f}" if schedule == "sequential" and record["mean_forgetting"] is not None else "")
          + f" probe {record['probe_nll']:.3f} ({train_seconds:.0f}s)", file=sys.stderr, flush=True)
    return record


# ---------------------------------------------------------------------------------------------- report
def variant(record):
    return record["method"] if record["method"] == "full" else f"{record['method']}@{record['ratio']}"


def aggregate(report, profile):
    runs, base = report["runs"], report["base"]
    tasks = list(profile["tasks"])
    by = {}
    for r in runs:
        by.setdefault((r["schedule"], variant(r)), {})[r["seed"]] = r
    table = []
    for (schedule, name), seeds in sorted(by.items()):
        rows = list(seeds.values())
        baseline = by.get((schedule, "full"), {})
        entry = {"schedule": schedule, "variant": name, "seeds": sorted(seeds)}
        for key, getter in {
            "mean_accuracy": lambda r: r["mean_accuracy"], "mean_auc": lambda r: r["mean_auc"],
            "forgetting": lambda r: r.get("mean_forgetting"), "forgetting_auc": lambda r: r.get("mean_forgetting_auc"),
            "mean_calibrated_accuracy": lambda r: r.get("mean_calibrated_accuracy"),
            "forgetting_calibrated": lambda r: r.get("mean_forgetting_calibrated"),
            "probe_nll_rise": lambda r: r["probe_nll"] - base[r["seed"]]["probe_nll"],
            "train_seconds": lambda r: r["train_seconds"],
        }.items():
            mean, ci = mean_ci([getter(r) for r in rows])
            entry[key], entry[key + "_ci"] = mean, ci
        for task in tasks:
            entry[f"acc/{task}"] = mean_ci([r["final"][task]["acc"] for r in rows])[0]
            entry[f"auc/{task}"] = mean_ci([r["final"][task]["auc"] for r in rows])[0]
            entry[f"cal/{task}"] = mean_ci([r["final"][task].get("calibrated_acc") for r in rows])[0]
        overlaps = [sum(r["mask_overlap"].values()) / len(r["mask_overlap"]) for r in rows if r.get("mask_overlap")]
        entry["mask_overlap"] = mean_ci(overlaps)[0]
        moved = [sum(r["mask_moved_fraction"].values()) / len(r["mask_moved_fraction"])
                 for r in rows if r.get("mask_moved_fraction")]
        entry["mask_moved_fraction"] = mean_ci(moved)[0]
        # paired differences against full fine-tuning (same seed)
        for key, getter in {"accuracy": lambda r: r["mean_accuracy"], "forgetting": lambda r: r.get("mean_forgetting")}.items():
            diffs = [getter(r) - getter(baseline[s]) for s, r in seeds.items()
                     if s in baseline and getter(r) is not None and name != "full"]
            entry[f"paired_{key}_vs_full"], entry[f"paired_{key}_vs_full_ci"] = mean_ci(diffs)
        table.append(entry)
    # EPI against its controls at the same ratio (paired by seed)
    contrasts = []
    ratios_run = sorted({r["ratio"] for r in runs if r["ratio"] is not None})  # --merge may add ratios
    for schedule in sorted({s for s, _ in by}):
        for ratio in ratios_run:
            epi = by.get((schedule, f"epi@{ratio}"), {})
            for other in (f"static@{ratio}", f"random@{ratio}", "full"):
                control = by.get((schedule, other), {})
                for key, getter in {"accuracy": lambda r: r["mean_accuracy"], "auc": lambda r: r["mean_auc"],
                                    "calibrated_accuracy": lambda r: r.get("mean_calibrated_accuracy"),
                                    "forgetting": lambda r: r.get("mean_forgetting"),
                                    "forgetting_calibrated": lambda r: r.get("mean_forgetting_calibrated")}.items():
                    diffs = [getter(epi[s]) - getter(control[s]) for s in epi if s in control
                             and getter(epi[s]) is not None and getter(control[s]) is not None]
                    if diffs:
                        mean, ci = mean_ci(diffs)
                        contrasts.append({"schedule": schedule, "ratio": ratio, "epi_minus": other, "metric": key,
                                          "mean": mean, "ci": ci, "n": len(diffs)})
    ratio = profile["summary_ratio"]

    def pick(method, schedule):
        return by.get((schedule, method if method == "full" else f"{method}@{ratio}"), {})

    seeds_run = sorted({r["seed"] for r in runs})
    summary = {"forgetting": {}, "forgetting_ci": {}, "avg_score": {}, "probe_nll_rise": {},
               "forgetting_calibrated": {}, "forgetting_calibrated_ci": {},
               "seeds": len(seeds_run), "steps_per_task": profile["steps_per_task"],
               "model": profile["model"], "isolation_ratio": ratio}
    for method in METHODS:
        sequential, mixed = pick(method, "sequential"), pick(method, "mixed")
        mean, ci = mean_ci([r["mean_forgetting"] for r in sequential.values()])
        summary["forgetting"][method], summary["forgetting_ci"][method] = mean, ci
        mean, ci = mean_ci([r.get("mean_forgetting_calibrated") for r in sequential.values()])
        summary["forgetting_calibrated"][method], summary["forgetting_calibrated_ci"][method] = mean, ci
        both = list(sequential.values()) + list(mixed.values())
        summary["avg_score"][method] = mean_ci([r["mean_accuracy"] for r in both])[0]
        summary["probe_nll_rise"][method] = mean_ci([r["probe_nll"] - base[r["seed"]]["probe_nll"] for r in both])[0]
    return table, contrasts, summary


def fmt(value, digits=3, signed=False):
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_ci(ci, digits=3):
    return "n/a" if not ci or ci[0] is None else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def describe_profile(report, profile) -> str:
    tasks = list(profile["tasks"])
    ratios = ", ".join(map(str, sorted({r["ratio"] for r in report["runs"] if r["ratio"]})))
    seeds = ", ".join(map(str, sorted({r["seed"] for r in report["runs"]})))
    isolation = (f"Isolation: ratios {ratios} per tensor, fisher importance, EMA 0.9, overlap `freeze`; epi: warmup "
                 f"{profile['warmup_steps']}, refresh every {profile['update_interval']} steps, patience "
                 f"{profile['release_patience']}, replay buffer {profile['replay_batches']} batches per task; "
                 f"static/random: mask from each task's first {profile['probe_steps']} steps.")
    training = (f"{profile['steps_per_task']} AdamW steps per task x batch {profile['batch_size']} (lr {profile['lr']} "
                f"constant, no weight decay, max {profile['max_length']} tokens), through `MultiTaskTrainer` "
                "(`task_schedule` sequential or mixed, the same data and seed for every method)")
    if profile.get("kind") == "lm":
        return (f"Profile `{report['profile']}`: causal LM `{profile['model']}` fine-tuned whole "
                f"({report['trainable_params'] / 1e6:.1f}M trainable parameters: all blocks and the tied embeddings) "
                f"on chat-formatted tasks {', '.join(tasks)} (sequential order as listed); {training}. {isolation}\n\n"
                f"Eval: {profile['eval_per_task']} held-out examples per task. sst2 (2-way) and agnews (4-way, "
                "label-balanced): option log-likelihood accuracy, calibrated accuracy (each option's mean score over "
                "the eval set subtracted) and ROC AUC; gsm8k: teacher-forced next-token accuracy on the reference "
                f"solution. Seeds {seeds} (each seed: its own data sample and batch order; methods paired within a "
                f"seed). Probe: mean token NLL of {profile['probe_pairs']} CodeAlpaca outputs given their "
                "instruction (never trained on), reported as the rise from the base model.")
    return (f"Profile `{report['profile']}`: model `{profile['model']}` + one linear head per task "
            f"({report['trainable_params'] / 1e6:.1f}M trainable parameters: word embeddings and the lowest "
            f"{profile['frozen_blocks']} of 6 blocks frozen); tasks {', '.join(tasks)} (label-balanced, binary); "
            f"{training}. {isolation}\n\n"
            f"Eval: {profile['eval_per_task']} held-out examples per task (chance 0.5). Seeds {seeds} (each seed: "
            "its own data sample, head init and batch order; methods paired within a seed). Probe: retrieval NLL "
            f"over {profile['probe_pairs']} CodeAlpaca instruction/output pairs (lower = better), reported as the "
            "rise from the base model.")


def write_report(report, profile, out_dir):
    table, contrasts, summary = aggregate(report, profile)
    report["table"], report["contrasts"], report["summary"] = table, contrasts, summary
    name = profile.get("report_name", "epi_quality")
    atomic_write_text(out_dir / f"{name}.json", json.dumps(report, indent=1))
    tasks = list(profile["tasks"])
    base = report["base"]
    lines = ["# EPI quality", "",
             "Command" + (f"s (merged runs): `{'`, then `'.join(report.get('earlier_commands', []) + [report['command']])}`"
                          if report.get("earlier_commands") else f": `{report['command']}`"), "",
             describe_profile(report, profile), "",
             f"Machine: {'; then '.join(report.get('merged_machines') or [report['machine']])}; wall time "
             f"{(report['wall_seconds'] + report.get('earlier_wall_seconds', 0.0)) / 60:.1f} min"
             + (f" (**{len(report['not_run'])} queued runs not run** within the time budget; listed under "
                "`not_run` in the JSON)" if report.get("not_run")
                else "" if report.get("complete") else " (**partial: written while the run was going**)") + ".", "",
             "Base model probe NLL per seed: " + ", ".join(f"{s}: {b['probe_nll']:.3f}" for s, b in base.items()), "",
             f"## Summary (ratio {profile['summary_ratio']}; forgetting from the sequential schedule, avg score = "
             f"mean final accuracy over tasks and the schedules that ran: "
             f"{', '.join(sorted({r['schedule'] for r in report['runs']}))})", "",
             "| method | forgetting (95% CI) | calibrated forgetting (95% CI) | avg score | probe NLL rise |",
             "|---|---|---|---|---|"]
    for method in METHODS:
        lines.append(f"| {method} | {fmt(summary['forgetting'][method], signed=True)} "
                     f"{fmt_ci(summary['forgetting_ci'][method])} | "
                     f"{fmt(summary['forgetting_calibrated'][method], signed=True)} "
                     f"{fmt_ci(summary['forgetting_calibrated_ci'][method])} | {fmt(summary['avg_score'][method])} | "
                     f"{fmt(summary['probe_nll_rise'][method], signed=True)} |")
    lines += ["", "## All variants (means over seeds)", "",
              "| schedule | variant | " + " | ".join(f"{t} acc / cal / AUC" for t in tasks)
              + " | mean acc | forgetting acc (CI) | forgetting AUC | acc vs full (paired CI) | probe NLL rise "
                "| mask overlap | mask moved | train s |",
              "|" + "---|" * (len(tasks) + 10)]
    for e in table:
        lines.append(f"| {e['schedule']} | {e['variant']} | "
                     + " | ".join(f"{fmt(e[f'acc/{t}'])} / {fmt(e[f'cal/{t}'])} / {fmt(e[f'auc/{t}'])}" for t in tasks)
                     + f" | {fmt(e['mean_accuracy'])} | {fmt(e['forgetting'], signed=True)} {fmt_ci(e['forgetting_ci'])} "
                     f"| {fmt(e['forgetting_auc'], signed=True)} | {fmt(e['paired_accuracy_vs_full'], signed=True)} "
                     f"{fmt_ci(e['paired_accuracy_vs_full_ci'])} | {fmt(e['probe_nll_rise'], signed=True)} "
                     f"| {fmt(e['mask_overlap'], 2)} | {fmt(e['mask_moved_fraction'], 2)} | {fmt(e['train_seconds'], 0)} |")
    lines += ["", "Forgetting = accuracy (or AUC) right after the task's own stage minus final, averaged over the "
              "tasks before the last one. Mask overlap = |A and B| / min(|A|, |B|) averaged over task pairs at the "
              "end. Mask moved = fraction of a task's mask units (as of the end of its stage) whose value changed "
              "by the end of training (sequential).", "", "## EPI against its controls (paired by seed, 95% CI)", "",
              "| schedule | ratio | epi minus | metric | mean | CI | n |", "|---|---|---|---|---|---|---|"]
    for c in contrasts:
        lines.append(f"| {c['schedule']} | {c['ratio']} | {c['epi_minus']} | {c['metric']} | "
                     f"{fmt(c['mean'], signed=True)} | {fmt_ci(c['ci'])} | {c['n']} |")
    atomic_write_text(out_dir / f"{name}.md", "\n".join(lines) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------- main
def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="fast")
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", str(ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--model-path", default=None,
                        help="a local HF model directory to use instead of the profile's offline alias")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--schedules", default="sequential,mixed")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ratios", default=None, help="comma-separated isolation ratios (default: the profile's)")
    parser.add_argument("--summary-ratios-only", action="store_true",
                        help="queue the profile's summary ratio for every seed first, other ratios after it")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the profile's)")
    parser.add_argument("--steps-per-task", type=int, default=None)
    parser.add_argument("--eval-per-task", type=int, default=None)
    parser.add_argument("--report-name", default=None, help="file stem in OUT_DIR (default: the profile's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds: start no run that the median finished run says cannot end in time")
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--work-dir", default="/tmp/epi_quality_runs")
    parser.add_argument("--merge", action="store_true", help="add to the runs already in OUT_DIR/<report>.json")
    parser.add_argument("--merge-from", nargs="+", default=None, metavar="JSON",
                        help="no training: add the runs of these reports (same profile, e.g. written on another "
                             "machine) to OUT_DIR/<report>.json and rewrite its tables")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one run's JSON spec (internal)
    parser.add_argument("--record-file", default=None, help=argparse.SUPPRESS)
    return parser


def resolve_profile(args):
    profile = dict(PROFILES[args.profile])
    if args.ratios:
        profile["ratios"] = tuple(float(r) for r in args.ratios.split(","))
    if args.seeds:
        profile["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.steps_per_task:
        profile["steps_per_task"] = args.steps_per_task
    if args.eval_per_task:
        profile["eval_per_task"] = args.eval_per_task
    if args.report_name:
        profile["report_name"] = args.report_name
    if args.model_path:
        profile["model_path"] = args.model_path
    return profile


class Preparer:
    """Per seed: data, the bench, a fresh-model factory, and the base model's scores (computed once)."""

    def __init__(self, profile, data_root, device):
        from sft_core.hub import load_encoder, load_tokenizer

        self.profile, self.data_root, self.device = profile, data_root, device
        self.model_name = profile.get("model_path") or profile["model"]
        self.tokenizer = load_tokenizer(self.model_name)
        self.encoder_state = load_encoder(self.model_name).state_dict() if profile.get("kind") != "lm" else None
        self.prepared = {}
        self.trainable_params = None

    def __call__(self, seed, known_base: dict | None = None):
        if seed in self.prepared:
            return self.prepared[seed]
        profile, root = self.profile, self.data_root
        n_train = profile["steps_per_task"] * profile["batch_size"]
        if profile.get("kind") == "lm":
            from epi_lm_tasks import LanguageModelBench, load_lm_tasks, load_probe_conversations
            from sft_core.hub import load_causal_lm

            data = load_lm_tasks(root, profile["tasks"], n_train, profile["eval_per_task"], seed)
            bench = LanguageModelBench(profile, data, load_probe_conversations(root, profile["probe_pairs"], seed),
                                       self.tokenizer)

            def make_model():
                model = load_causal_lm(self.model_name)
                return model.to(self.device) if self.device != "cpu" else model
        else:
            from sft_core.hub import load_encoder

            data = load_tasks(root, profile["tasks"], n_train, profile["eval_per_task"], seed)
            bench = Bench(profile, data, self.tokenizer, seed)
            bench.probe_pairs = load_probe_pairs(root, profile["probe_pairs"], seed)
            base_state_holder = {}

            def make_model(seed=seed):
                encoder = load_encoder(self.model_name)
                model = MultiHeadClassifier(encoder, bench.tasks, {t: len(data[t][2]) for t in bench.tasks}, seed)
                if "state" not in base_state_holder:
                    model.encoder.load_state_dict(self.encoder_state)
                    base_state_holder["state"] = {k: v.clone() for k, v in model.state_dict().items()}
                model.load_state_dict(base_state_holder["state"])
                freeze_lower(model, profile["frozen_blocks"])
                return model.to(self.device) if self.device != "cpu" else model
        if known_base is not None:  # another worker already scored this seed's base model
            base, self.trainable_params = known_base["scores"], known_base["trainable_params"]
        else:
            base_model = make_model()
            self.trainable_params = sum(p.numel() for p in base_model.parameters() if p.requires_grad)
            bench.model = base_model
            base = {"probe_nll": bench.probe(), "untrained": {t: bench.evaluate(t) for t in bench.tasks}}
            bench.model = None
            del base_model
        self.prepared[seed] = (bench, make_model, base)
        return self.prepared[seed]


def run_queue(args, profile):
    """(schedule, method, ratio, seed) in priority order: the sequential schedule first; with
    --summary-ratios-only every seed of the summary ratio before the other ratios."""
    methods = args.methods.split(",")
    ratios = list(profile["ratios"])
    passes = [ratios]
    if args.summary_ratios_only and profile["summary_ratio"] in ratios:
        passes = [[profile["summary_ratio"]], [r for r in ratios if r != profile["summary_ratio"]]]
    queue = []
    for pass_ratios in passes:
        for schedule in args.schedules.split(","):
            for seed in profile["seeds"]:
                for method in methods:
                    if method == "full":
                        if pass_ratios is passes[0]:
                            queue.append((schedule, method, None, seed))
                        continue
                    for ratio in pass_ratios:
                        queue.append((schedule, method, ratio, seed))
    return queue


def worker_main(args, profile, data_root):
    """Train one run (its spec in --worker) and write its record, with the seed's base scores, to --record-file."""
    schedule, method, ratio, seed = json.loads(args.worker)
    prepare = Preparer(profile, data_root, args.device)
    base_file = Path(args.work_dir) / f"base-seed{seed}.json"  # the base model is scored once per seed
    known_base = json.loads(base_file.read_text()) if base_file.is_file() else None
    bench, make_model, base = prepare(seed, known_base)
    if known_base is None:
        base_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(base_file, json.dumps({"scores": base, "trainable_params": prepare.trainable_params}))
    record = run_one(method, ratio if ratio is not None else 0.1, schedule, seed, profile, bench, make_model,
                     Path(args.work_dir), device=args.device)
    record["ratio"] = ratio
    record["base"] = base
    record["trainable_params"] = prepare.trainable_params
    atomic_write_text(Path(args.record_file), json.dumps(record))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    profile = resolve_profile(args)
    data_root = Path(args.data_root) / "sft"
    if not data_root.is_dir():
        print(f"error: --data-root: {data_root} does not exist", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.worker:
        return worker_main(args, profile, data_root)
    if args.merge_from:
        return merge_reports(Path(args.out_dir), profile, [Path(f) for f in args.merge_from])

    started = time.time()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = profile["report_name"]
    device_words = (f"1 CUDA GPU ({torch.cuda.get_device_name(0)}), {args.jobs} runs at a time"
                    if args.device == "cuda" else f"{args.threads} torch thread(s)")
    report = {"complete": False, "command": "python benchmarks/epi_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {device_words}, torch {torch.__version__}",
              "profile": args.profile, "profile_settings": profile, "base": {}, "runs": []}
    if args.merge and (out_dir / f"{name}.json").is_file():
        previous = json.loads((out_dir / f"{name}.json").read_text())
        report["runs"], report["base"] = previous["runs"], {int(k): v for k, v in previous["base"].items()}
        report["trainable_params"] = previous.get("trainable_params")
        report["earlier_commands"] = previous.get("earlier_commands", []) + [previous["command"]]
        report["earlier_wall_seconds"] = previous.get("earlier_wall_seconds", 0.0) + previous.get("wall_seconds", 0.0)
    done = {(r["schedule"], r["method"], r["ratio"], r["seed"]) for r in report["runs"]}
    queue = [spec for spec in run_queue(args, profile) if spec not in done]
    work_dir = Path(args.work_dir)

    def add(record):
        report["base"].setdefault(record["seed"], record.pop("base", None))
        report["trainable_params"] = record.pop("trainable_params", report.get("trainable_params"))
        report["runs"].append(record)
        report["wall_seconds"] = time.time() - started
        write_report(report, profile, out_dir)

    if args.jobs <= 1:
        prepare = Preparer(profile, data_root, args.device)
        for schedule, method, ratio, seed in queue:
            bench, make_model, base = prepare(seed)
            record = run_one(method, ratio if ratio is not None else 0.1, schedule, seed, profile, bench,
                             make_model, work_dir, device=args.device)
            record.update(ratio=ratio, base=base, trainable_params=prepare.trainable_params)
            add(record)
    else:
        skipped = run_in_workers(args, argv, queue, work_dir, add, started)
        report["not_run"] = [list(spec) for spec in skipped]
    report["complete"] = not report.get("not_run")
    report["wall_seconds"] = time.time() - started
    summary = write_report(report, profile, out_dir)
    print(json.dumps(summary, indent=1))
    return 0


def merge_reports(out_dir: Path, profile, sources) -> int:
    """Add the runs of ``sources`` to OUT_DIR/<report>.json (skipping runs it already has) and rewrite it."""
    target = out_dir / f"{profile['report_name']}.json"
    if not target.is_file():
        print(f"error: --merge-from: {target} does not exist (run the benchmark first)", file=sys.stderr)
        return 2
    report = json.loads(target.read_text())
    report["base"] = {int(k): v for k, v in report["base"].items()}
    profile = dict(report["profile_settings"])
    have = {(r["schedule"], r["method"], r["ratio"], r["seed"]) for r in report["runs"]}
    for source in sources:
        other = json.loads(source.read_text())
        if other["profile"] != report["profile"]:
            print(f"error: --merge-from: {source} is profile {other['profile']!r}, {target} is "
                  f"{report['profile']!r}", file=sys.stderr)
            return 2
        added = [r for r in other["runs"] if (r["schedule"], r["method"], r["ratio"], r["seed"]) not in have]
        report["runs"] += added
        have |= {(r["schedule"], r["method"], r["ratio"], r["seed"]) for r in added}
        for seed, base in other["base"].items():
            report["base"].setdefault(int(seed), base)
        report["earlier_commands"] = report.get("earlier_commands", []) + [report["command"]]
        report["earlier_wall_seconds"] = report.get("earlier_wall_seconds", 0.0) + report.get("wall_seconds", 0.0)
        report["command"], report["wall_seconds"] = other["command"], other.get("wall_seconds", 0.0)
        report.setdefault("merged_machines", [report["machine"]]).append(other["machine"])
        report["not_run"] = [spec for spec in report.get("not_run", []) if tuple(spec) not in have]
        print(f"added {len(added)} runs from {source}", file=sys.stderr)
    write_report(report, profile, out_dir)
    return 0


def run_in_workers(args, argv, queue, work_dir, add, started):
    """Run the queue in up to --jobs worker processes; returns the specs not started (time budget) or failed."""
    import subprocess

    base_argv = list(sys.argv[1:] if argv is None else argv)
    record_dir = work_dir / "records"
    record_dir.mkdir(parents=True, exist_ok=True)
    pending, running, durations, left_out = list(queue), {}, [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            if args.time_budget and durations:
                typical = sorted(durations)[len(durations) // 2]
                if time.time() - started + typical > args.time_budget:
                    left_out += pending
                    pending = []
                    break
            spec = pending.pop(0)
            record_file = record_dir / ("-".join(map(str, spec)) + ".json")
            command = [sys.executable, str(Path(__file__).resolve()), *base_argv, "--worker", json.dumps(spec),
                       "--record-file", str(record_file)]
            running[subprocess.Popen(command)] = (spec, record_file, time.time())
        time.sleep(1.0)
        for process in [p for p in running if p.poll() is not None]:
            spec, record_file, began = running.pop(process)
            if process.returncode == 0 and record_file.is_file():
                durations.append(time.time() - began)
                add(json.loads(record_file.read_text()))
            else:
                print(f"[epi_quality] run {spec} failed with exit code {process.returncode}", file=sys.stderr,
                      flush=True)
                left_out.append(spec)
    return left_out


if __name__ == "__main__":
    sys.exit(main())
