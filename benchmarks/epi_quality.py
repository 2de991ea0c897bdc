"""EPI quality: per-task accuracy, forgetting and a general-ability probe for full / static / epi.

    python benchmarks/epi_quality.py --profile small            # CPU, <= 30 min
    python benchmarks/epi_quality.py --profile full             # GPU

Tasks (from --data-root/sft, see its README): SST-2 sentiment (train: phrase-level train.tsv, eval:
test.tsv), AG News topic (train: a seeded sample of dev.tsv, eval: test.tsv) and, in `full`, LogiQA
4-way multiple choice (train Eval.txt, eval Test.txt). Targets are
short labels; scores are exact match of the greedily generated label. Every run starts from the same
smollm2-135m weights and sees the same batches; schedules: `sequential` (task after task, evaluated after
each stage: forgetting = accuracy right after the task's own stage - final accuracy) and `mixed`
(task-homogeneous steps interleaved). General-ability probe: completion-only NLL (nats/token) on held-out
CodeAlpaca instructions before and after training (retention = lower increase).
Writes docs/results/epi_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sft_core.epi import EPIConfig, attach_epi  # noqa: E402
from sft_core.epi.drift import atomic_write_text  # noqa: E402
from sft_core.sft_data import CausalLMCollator, tokenize_messages  # noqa: E402
from sft_core.tasks import TaskHomogeneousBatchSampler  # noqa: E402

SYSTEM = "Answer with the label only."
PROFILES = {
    # small: sized for a shared 2-core CPU (each 135M step costs seconds): two short-label tasks, the last
    # 6 transformer blocks trainable, 8 steps per task.
    "small": dict(tasks=("sst2", "agnews"), train_per_task=64, eval_per_task=24, steps_per_task=8,
                  batch_size=4, lr=2e-4, max_length=128, probe_examples=12, train_last_layers=6,
                  isolation_ratio=0.2, warmup_steps=2, update_interval=2, probe_steps=3, release_patience=2),
    "full": dict(tasks=("sst2", "agnews", "logiqa"), train_per_task=2000, eval_per_task=500, steps_per_task=300,
                 batch_size=16, lr=5e-5, max_length=512, probe_examples=200, train_last_layers=0,
                 isolation_ratio=0.1, warmup_steps=20, update_interval=20, probe_steps=50, release_patience=2),
}
METHODS = ("full", "static", "epi")


def words(text: str, limit: int) -> str:
    parts = text.split()
    return " ".join(parts[:limit]) + (" ..." if len(parts) > limit else "")


def example(task, prompt, label):
    return {"task": task, "label": label, "messages": [{"role": "system", "content": SYSTEM},
                                                      {"role": "user", "content": prompt},
                                                      {"role": "assistant", "content": label}]}


def read_tsv(path, header: bool):
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[1:] if header else rows


def load_sst2(root, rng, n_train, n_eval, small):
    def make(sentence, label):
        prompt = f"Is the sentiment of this review positive or negative?\nReview: {sentence.strip()}"
        return example("sst2", prompt, "positive" if label.strip() == "1" else "negative")

    train = [r for r in read_tsv(root / "sst2" / "train.tsv", True) if len(r) == 2 and len(r[0].split()) >= 6]
    evaluation = [r for r in read_tsv(root / "sst2" / "test.tsv", True) if len(r) == 2]
    return [make(*r) for r in rng.sample(train, n_train)], [make(*r) for r in rng.sample(evaluation, n_eval)]


def load_agnews(root, rng, n_train, n_eval, small):
    def make(text, label):
        prompt = f"Topic of this news article: World, Sports, Business or Sci/Tech?\nArticle: {words(text, 40 if small else 200)}"
        return example("agnews", prompt, label.strip())

    dev = [r for r in read_tsv(root / "agnews" / "dev.tsv", False) if len(r) == 2]
    test = [r for r in read_tsv(root / "agnews" / "test.tsv", False) if len(r) == 2]
    return [make(*r) for r in rng.sample(dev, n_train)], [make(*r) for r in rng.sample(test, n_eval)]


def parse_logiqa(path):
    blocks = [b.strip().split("\n") for b in Path(path).read_text(encoding="utf-8").split("\n\n") if b.strip()]
    questions = []
    for lines in blocks:
        if len(lines) >= 7 and lines[0].strip() in "abcd":
            questions.append({"answer": lines[0].strip().upper(), "context": lines[1], "question": lines[2],
                              "options": [line.strip() for line in lines[3:7]]})
    return questions


def load_logiqa(root, rng, n_train, n_eval, small):
    def make(q):
        context = words(q["context"], 50 if small else 400)
        options = "\n".join(words(option, 14 if small else 100) for option in q["options"])
        prompt = f"{context}\n{q['question']}\n{options}\nAnswer with A, B, C or D."
        return example("logiqa", prompt, q["answer"])

    return ([make(q) for q in rng.sample(parse_logiqa(root / "logiqa" / "Eval.txt"), n_train)],
            [make(q) for q in rng.sample(parse_logiqa(root / "logiqa" / "Test.txt"), n_eval)])


def load_probe(root, rng, n):
    records = json.loads((root / "codealpaca" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    chosen = rng.sample(records, n)
    return [[{"role": "user", "content": r["instruction"] + ("\n" + r["input"] if r["input"] else "")},
             {"role": "assistant", "content": r["output"]}] for r in chosen]


LOADERS = {"sst2": load_sst2, "agnews": load_agnews, "logiqa": load_logiqa}


def normalise(text: str) -> str:
    return text.strip().split("\n")[0].strip().rstrip(".").strip().lower()


@torch.no_grad()
def accuracy(model, tokenizer, examples, batch_size=24):
    model.eval()
    tokenizer.padding_side = "left"
    correct = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompts = [tokenizer.apply_chat_template(e["messages"][:-1], tokenize=False, add_generation_prompt=True)
                   for e in chunk]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        output = model.generate(**encoded, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += sum(normalise(t) == normalise(e["label"]) for t, e in zip(texts, chunk))
    model.train()
    return correct / len(examples)


@torch.no_grad()
def probe_nll(model, tokenizer, conversations, max_length, batch_size=8):
    model.eval()
    collate = CausalLMCollator(tokenizer.pad_token_id)
    total, tokens = 0.0, 0
    for start in range(0, len(conversations), batch_size):
        batch = collate([tokenize_messages(c, tokenizer, max_length) for c in conversations[start:start + batch_size]])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                   ignore_index=-100, reduction="sum").item()
        tokens += int((labels != -100).sum())
    model.train()
    return total / tokens


def freeze_all_but_last_layers(model, n_layers):
    if n_layers <= 0:
        return
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in model.model.layers[-n_layers:]:
        for param in layer.parameters():
            param.requires_grad_(True)
    for param in model.model.norm.parameters():
        param.requires_grad_(True)


def run(method, schedule, profile, base_state, model, tokenizer, train, evaluation, probe, args):
    model.load_state_dict(base_state)
    freeze_all_but_last_layers(model, profile["train_last_layers"])
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=profile["lr"], weight_decay=0.0)
    config = EPIConfig(method=method, isolation_ratio=profile["isolation_ratio"], warmup_steps=profile["warmup_steps"],
                       update_interval=profile["update_interval"], probe_steps=profile["probe_steps"],
                       release_patience=profile["release_patience"])
    isolator = attach_epi(model, optimizer, config)
    tasks = list(profile["tasks"])
    items = [item for task in tasks for item in train[task]]
    encoded = [tokenize_messages(item["messages"], tokenizer, profile["max_length"]) for item in items]
    sampler = TaskHomogeneousBatchSampler([item["task"] for item in items], batch_size=profile["batch_size"],
                                          schedule=schedule, proportions={t: 1.0 for t in tasks}, seed=args.seed)
    collate = CausalLMCollator(tokenizer.pad_token_id)
    steps_total = profile["steps_per_task"] * len(tasks)
    batches = []
    for epoch in range(100):
        sampler.set_epoch(epoch)
        batches += list(sampler)
        if len(batches) >= steps_total:
            break
    # exactly steps_per_task steps per task (sequential: consecutive, in task order; mixed: interleaved)
    taken = {t: 0 for t in tasks}
    kept = []
    for batch in batches:
        task = items[batch[0]]["task"]
        if taken[task] < profile["steps_per_task"]:
            taken[task] += 1
            kept.append(batch)
    batches = kept
    stages, started, losses = {}, time.time(), []
    for step, batch_indices in enumerate(batches):
        task = items[batch_indices[0]]["task"]
        loss = model(**collate([encoded[i] for i in batch_indices])).loss
        loss.backward()
        isolator.step(task)
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        next_task = items[batches[step + 1][0]]["task"] if step + 1 < len(batches) else None
        if schedule == "sequential" and next_task != task:  # tasks seen so far: forgetting needs no more
            stages[task] = {t: accuracy(model, tokenizer, evaluation[t]) for t in tasks[:tasks.index(task) + 1]}
            print(f"  [{method}/{schedule}] after stage {task}: {stages[task]}", flush=True)
    final = stages[tasks[-1]] if schedule == "sequential" else {t: accuracy(model, tokenizer, evaluation[t]) for t in tasks}
    forgetting = {t: stages[t][t] - final[t] for t in tasks[:-1]} if schedule == "sequential" else None
    result = {"method": method, "schedule": schedule, "steps": len(batches), "train_seconds": time.time() - started,
              "final_accuracy": final, "mean_accuracy": sum(final.values()) / len(tasks), "stages": stages,
              "forgetting": forgetting,
              "mean_forgetting": sum(forgetting.values()) / len(forgetting) if forgetting else None,
              "probe_nll": probe_nll(model, tokenizer, probe, profile["max_length"]),
              "first_losses": losses[:3], "last_losses": losses[-3:],
              "protected_fraction": {t: sum(s.protected_counts) / sum(isolator.units)
                                     for t, s in isolator.tasks.items()} if method != "full" else None}
    print(f"[{method}/{schedule}] final {final} probe NLL {result['probe_nll']:.3f} "
          f"({result['train_seconds']:.0f}s)", flush=True)
    return result


def write_report(args, profile, report, out_dir):
    atomic_write_text(out_dir / "epi_quality.json", json.dumps(report, indent=2))
    tasks = profile["tasks"]
    lines = ["# EPI quality", "",
             f"Model `{args.model}`, profile `{args.profile}`: tasks {', '.join(tasks)}; {profile['steps_per_task']} "
             f"optimizer steps per task x batch {profile['batch_size']} ({profile['train_per_task']} training examples "
             f"per task), AdamW lr {profile['lr']}, max length {profile['max_length']} tokens, "
             + (f"only the last {profile['train_last_layers']} transformer blocks (+ final norm) trainable, "
                if profile["train_last_layers"] else "all parameters trainable, ")
             + f"isolation ratio {profile['isolation_ratio']}, warmup {profile['warmup_steps']}, update interval "
             f"{profile['update_interval']}, static probe {profile['probe_steps']} steps, release patience "
             f"{profile['release_patience']}. Eval: {profile['eval_per_task']} held-out examples per task, exact "
             f"match of the greedy label. Probe: completion NLL on {profile['probe_examples']} CodeAlpaca examples.", "",
             f"Command: `{report['command']}`", "", f"Machine: {report['machine']}; total wall time "
             f"{report['wall_seconds'] / 60:.1f} min.", "",
             f"Base model before training: accuracy " + ", ".join(f"{t} {report['base']['accuracy'][t]:.3f}" for t in tasks)
             + f"; probe NLL {report['base']['probe_nll']:.3f}.", "",
             "| schedule | method | " + " | ".join(f"{t} acc" for t in tasks) + " | mean acc | mean forgetting | probe NLL (base "
             f"{report['base']['probe_nll']:.3f}) |", "|" + "---|" * (len(tasks) + 5)]
    for r in report["runs"]:
        forgetting = f"{r['mean_forgetting']:+.3f}" if r["mean_forgetting"] is not None else "n/a"
        lines.append(f"| {r['schedule']} | {r['method']} | " + " | ".join(f"{r['final_accuracy'][t]:.3f}" for t in tasks)
                     + f" | {r['mean_accuracy']:.3f} | {forgetting} | {r['probe_nll']:.3f} |")
    lines += ["", "Forgetting (sequential only) = accuracy right after the task's own stage minus final accuracy, "
              "averaged over the tasks before the last one; positive = forgotten.", "",
              "Per-stage accuracies (sequential):", ""]
    for r in report["runs"]:
        if r["schedule"] == "sequential":
            stages = "; ".join(f"after {s}: " + ", ".join(f"{t} {a:.2f}" for t, a in acc.items())
                               for s, acc in r["stages"].items())
            lines.append(f"- {r['method']}: {stages}")
    lines += ["", f"Small samples ({profile['eval_per_task']} eval examples per task: one example = "
              f"{1 / profile['eval_per_task']:.3f} accuracy) and a tiny training budget: read differences below "
              "~0.05 as noise."]
    atomic_write_text(out_dir / "epi_quality.md", "\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="small")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", str(ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--schedules", default="sequential,mixed")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--smoke", action="store_true", help="a 1-step-per-task check of the script itself")
    args = parser.parse_args(argv)
    profile = dict(PROFILES[args.profile])
    if args.smoke:
        profile.update(steps_per_task=1, eval_per_task=4, train_per_task=8, probe_examples=2)
    data_root = Path(args.data_root) / "sft"
    if not data_root.is_dir():
        parser.error(f"--data-root: {data_root} does not exist (see /work/shared/datasets/sft/README.md)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    from sft_core.hub import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    rng = random.Random(args.seed)
    train, evaluation = {}, {}
    for task in profile["tasks"]:
        train[task], evaluation[task] = LOADERS[task](data_root, rng, profile["train_per_task"],
                                                      profile["eval_per_task"], args.profile == "small")
    probe = load_probe(data_root, rng, profile["probe_examples"])
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    base = {"accuracy": {t: accuracy(model, tokenizer, evaluation[t]) for t in profile["tasks"]},
            "probe_nll": probe_nll(model, tokenizer, probe, profile["max_length"])}
    print(f"base: {base}", flush=True)
    runs = [run(method, schedule, profile, base_state, model, tokenizer, train, evaluation, probe, args)
            for schedule in args.schedules.split(",") for method in args.methods.split(",")]
    report = {"command": "python benchmarks/epi_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "model": args.model, "profile": args.profile, "profile_settings": profile, "seed": args.seed,
              "base": base, "runs": runs, "wall_seconds": time.time() - started}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_report(args, profile, report, out_dir)
    print((out_dir / "epi_quality.md").read_text())


if __name__ == "__main__":
    main()
