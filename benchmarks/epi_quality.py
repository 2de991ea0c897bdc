"""EPI quality: per-task accuracy, forgetting and a general-ability probe for full / static / epi.

    python benchmarks/epi_quality.py --profile small            # CPU, ~20-25 min on a shared 2-core machine
    python benchmarks/epi_quality.py --profile full             # GPU

Tasks (from --data-root/sft, see its README): SST-2 sentiment (train: phrase-level train.tsv, eval:
test.tsv), AG News topic (train: a seeded sample of dev.tsv, eval: test.tsv) and, in `full`, LogiQA
4-way multiple choice (train Eval.txt, eval Test.txt). Train and eval samples are label-balanced.
Every label is one token, and classification is scored by constrained choice: the label whose
completion (its single token) has the highest log-likelihood after the chat prompt wins (one forward
pass per prompt, only the last position's logits). As a by-product, "greedy" counts an example as
correct only when the label token is also the argmax over the whole vocabulary (the first token of an
unconstrained greedy answer).

Every run starts from the same smollm2-135m weights and sees the same batches (label-balanced,
task-homogeneous, seeded); schedules: `sequential` (task after task, evaluated after each stage:
forgetting = accuracy right after the task's own stage - final accuracy) and `mixed` (the same batches,
task-homogeneous steps interleaved in a seeded order). In `sequential`, nothing is protected while
the first task trains (no other task has a mask yet), so the first stage is bit-identical for all
methods; it is trained once, with every method's isolator observing the same gradients (asserted: no
isolator saves or zeroes anything there), and each method continues from a copy of the weights and
optimizer state. General-ability probe: completion-only NLL (nats/token) on held-out CodeAlpaca
instructions before and after training (retention = lower increase).
Writes docs/results/epi_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
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
from sft_core.atomic_io import atomic_write_text  # noqa: E402
from sft_core.sft_data import CausalLMCollator, tokenize_messages  # noqa: E402

SYSTEM = "Answer with the label only."
PROFILES = {
    # small: sized for a shared 2-core CPU (a 135M step costs seconds): two single-token-label tasks,
    # short prompts, the last 6 transformer blocks trainable, label-balanced batches of 8.
    "small": dict(tasks=("sst2", "agnews"), train_per_task=160, eval_per_task=64, steps_per_task=20,
                  batch_size=8, lr=3e-4, max_length=96, probe_examples=16, probe_max_length=128,
                  train_last_layers=6, text_words=30,
                  isolation_ratio=0.2, warmup_steps=4, update_interval=4, probe_steps=8, release_patience=2),
    "full": dict(tasks=("sst2", "agnews", "logiqa"), train_per_task=4800, eval_per_task=500, steps_per_task=300,
                 batch_size=16, lr=5e-5, max_length=512, probe_examples=200, probe_max_length=512,
                 train_last_layers=0, text_words=200,
                 isolation_ratio=0.1, warmup_steps=20, update_interval=20, probe_steps=50, release_patience=2),
}
METHODS = ("full", "static", "epi")
# AG News "Sci/Tech" is three tokens; "Technology" is one (scoring compares single label tokens).
AGNEWS_LABELS = {"World": "World", "Sports": "Sports", "Business": "Business", "Sci/Tech": "Technology"}


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


def balanced_sample(rng, items, label_of, n):
    """n items with the labels as equal as possible (label order sorted, seeded), shuffled."""
    by_label = {}
    for item in items:
        by_label.setdefault(label_of(item), []).append(item)
    labels = sorted(by_label)
    chosen = []
    for i, label in enumerate(labels):
        chosen += rng.sample(by_label[label], n // len(labels) + (1 if i < n % len(labels) else 0))
    rng.shuffle(chosen)
    return chosen


def load_sst2(root, rng, n_train, n_eval, profile):
    def make(sentence, label):
        prompt = f"Is the sentiment of this review positive or negative?\nReview: {words(sentence.strip(), profile['text_words'])}"
        return example("sst2", prompt, "positive" if label.strip() == "1" else "negative")

    train = [r for r in read_tsv(root / "sst2" / "train.tsv", True) if len(r) == 2 and len(r[0].split()) >= 6]
    evaluation = [r for r in read_tsv(root / "sst2" / "test.tsv", True) if len(r) == 2]
    return ([make(*r) for r in balanced_sample(rng, train, lambda r: r[1].strip(), n_train)],
            [make(*r) for r in balanced_sample(rng, evaluation, lambda r: r[1].strip(), n_eval)])


def load_agnews(root, rng, n_train, n_eval, profile):
    def make(text, label):
        prompt = (f"Topic of this news article: World, Sports, Business or Technology?\n"
                  f"Article: {words(text, profile['text_words'])}")
        return example("agnews", prompt, AGNEWS_LABELS[label.strip()])

    dev = [r for r in read_tsv(root / "agnews" / "dev.tsv", False) if len(r) == 2]
    test = [r for r in read_tsv(root / "agnews" / "test.tsv", False) if len(r) == 2]
    return ([make(*r) for r in balanced_sample(rng, dev, lambda r: r[1].strip(), n_train)],
            [make(*r) for r in balanced_sample(rng, test, lambda r: r[1].strip(), n_eval)])


def parse_logiqa(path):
    blocks = [b.strip().split("\n") for b in Path(path).read_text(encoding="utf-8").split("\n\n") if b.strip()]
    questions = []
    for lines in blocks:
        if len(lines) >= 7 and lines[0].strip() in "abcd":
            questions.append({"answer": lines[0].strip().upper(), "context": lines[1], "question": lines[2],
                              "options": [line.strip() for line in lines[3:7]]})
    return questions


def load_logiqa(root, rng, n_train, n_eval, profile):
    def make(q):
        context = words(q["context"], 2 * profile["text_words"])
        options = "\n".join(f"{letter}. {words(option, profile['text_words'] // 2)}"
                            for letter, option in zip("ABCD", q["options"]))
        prompt = f"{context}\n{q['question']}\n{options}\nAnswer with A, B, C or D."
        return example("logiqa", prompt, q["answer"])

    def answer(q):
        return q["answer"]

    return ([make(q) for q in balanced_sample(rng, parse_logiqa(root / "logiqa" / "Eval.txt"), answer, n_train)],
            [make(q) for q in balanced_sample(rng, parse_logiqa(root / "logiqa" / "Test.txt"), answer, n_eval)])


def load_probe(root, rng, n):
    records = json.loads((root / "codealpaca" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    chosen = rng.sample(records, n)
    return [[{"role": "user", "content": r["instruction"] + ("\n" + r["input"] if r["input"] else "")},
             {"role": "assistant", "content": r["output"]}] for r in chosen]


LOADERS = {"sst2": load_sst2, "agnews": load_agnews, "logiqa": load_logiqa}


def label_token(tokenizer, label: str) -> int:
    ids = tokenizer(label, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"label {label!r} is {len(ids)} tokens; constrained-choice scoring needs single-token labels")
    return ids[0]


@torch.no_grad()
def accuracy(model, tokenizer, examples, batch_size=16):
    """-> (constrained-choice accuracy, greedy-first-token accuracy, share of each predicted label)."""
    model.eval()
    labels = sorted({e["label"] for e in examples})
    candidates = torch.tensor([label_token(tokenizer, label) for label in labels])
    prompts = [tokenizer(tokenizer.apply_chat_template(e["messages"][:-1], tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"] for e in examples]
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    correct = greedy = 0
    predicted = {label: 0 for label in labels}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        longest = max(len(prompts[i]) for i in chunk)
        input_ids = torch.full((len(chunk), longest), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), longest), dtype=torch.long)
        for row, i in enumerate(chunk):  # left padding: the last position is every prompt's last token
            input_ids[row, longest - len(prompts[i]):] = torch.tensor(prompts[i])
            attention_mask[row, longest - len(prompts[i]):] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=1).logits[:, -1].float()
        choice = logits[:, candidates].argmax(dim=-1)
        top = logits.argmax(dim=-1)
        for row, i in enumerate(chunk):
            gold = labels.index(examples[i]["label"])
            correct += int(choice[row]) == gold
            greedy += int(top[row]) == int(candidates[gold])
            predicted[labels[int(choice[row])]] += 1
    model.train()
    n = len(examples)
    return {"acc": correct / n, "greedy": greedy / n, "predicted": {k: v / n for k, v in predicted.items()}}


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
    for param in model.parameters():
        param.requires_grad_(n_layers <= 0)
    if n_layers <= 0:
        return
    for layer in model.model.layers[-n_layers:]:
        for param in layer.parameters():
            param.requires_grad_(True)
    for param in model.model.norm.parameters():
        param.requires_grad_(True)


def make_batches(train, profile, seed):
    """Per task, steps_per_task label-balanced batches (each label equally often per batch as far as the
    batch size allows, examples reused only after the task's pool is exhausted); seeded."""
    rng = random.Random(seed + 1)
    batches = {}
    for task, items in train.items():
        by_label = {}
        for index, item in enumerate(items):
            by_label.setdefault(item["label"], []).append(index)
        labels = sorted(by_label)
        pools = {label: [] for label in labels}
        task_batches = []
        for step in range(profile["steps_per_task"]):
            batch = []
            for slot in range(profile["batch_size"]):
                label = labels[(slot + step * profile["batch_size"]) % len(labels)]
                if not pools[label]:
                    pools[label] = rng.sample(by_label[label], len(by_label[label]))
                batch.append(pools[label].pop())
            rng.shuffle(batch)
            task_batches.append((task, batch))
        batches[task] = task_batches
    return batches


def schedule_batches(batches, tasks, schedule, seed):
    if schedule == "sequential":
        return [b for task in tasks for b in batches[task]]
    order = [task for task in tasks for _ in batches[task]]
    random.Random(seed + 2).shuffle(order)
    cursor = {task: 0 for task in tasks}
    mixed = []
    for task in order:
        mixed.append(batches[task][cursor[task]])
        cursor[task] += 1
    return mixed


def make_config(method, profile):
    return EPIConfig(method=method, isolation_ratio=profile["isolation_ratio"], warmup_steps=profile["warmup_steps"],
                     update_interval=profile["update_interval"], probe_steps=profile["probe_steps"],
                     release_patience=profile["release_patience"])


def train_steps(model, optimizer, isolators, batches, encoded, collate, losses):
    """One optimizer step per batch; several isolators only while none of them protects anything."""
    for task, indices in batches:
        loss = model(**collate([encoded[task][i] for i in indices])).loss
        loss.backward()
        for isolator in isolators:
            isolator.before_step(task)
        if len(isolators) > 1 and any(isolator._saved is not None for isolator in isolators):
            raise RuntimeError("shared steps are only exact while no isolator protects anything")
        optimizer.step()
        for isolator in isolators:
            isolator.after_step(task)
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))


def protected_fraction(isolator):
    if isolator.config.method == "full":
        return None
    return {t: sum(s.protected_counts) / sum(isolator.units) for t, s in isolator.tasks.items()}


def evaluate(model, tokenizer, evaluation, tasks):
    return {t: accuracy(model, tokenizer, evaluation[t]) for t in tasks}


def summarise(method, schedule, steps, seconds, final, stages, losses, isolator, model, tokenizer, probe, profile):
    tasks = list(profile["tasks"])
    forgetting = ({t: stages[t][t]["acc"] - final[t]["acc"] for t in tasks[:-1]} if schedule == "sequential" else None)
    result = {"method": method, "schedule": schedule, "steps": steps, "train_seconds": round(seconds, 1),
              "final_accuracy": {t: final[t]["acc"] for t in tasks},
              "final_greedy_accuracy": {t: final[t]["greedy"] for t in tasks},
              "final_predicted_share": {t: final[t]["predicted"] for t in tasks},
              "mean_accuracy": sum(final[t]["acc"] for t in tasks) / len(tasks),
              "stages": {s: {t: a["acc"] for t, a in acc.items()} for s, acc in stages.items()},
              "forgetting": forgetting,
              "mean_forgetting": sum(forgetting.values()) / len(forgetting) if forgetting else None,
              "probe_nll": probe_nll(model, tokenizer, probe, profile["probe_max_length"]),
              "losses": losses, "protected_fraction": protected_fraction(isolator)}
    print(f"[{method}/{schedule}] final {result['final_accuracy']} probe NLL {result['probe_nll']:.3f} "
          f"({seconds:.0f}s train+eval)", flush=True)
    return result


def trainable_state(model):
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def restore_trainable(model, state):
    with torch.no_grad():
        for p, saved in zip([p for p in model.parameters() if p.requires_grad], state):
            p.copy_(saved)


def run_sequential(methods, profile, base_state, model, tokenizer, batches, encoded, evaluation, probe):
    """First stage trained once (bit-identical for every method, see the module docstring), later stages
    per method from a copy of the weights and optimizer state."""
    tasks = list(profile["tasks"])
    model.load_state_dict(base_state)
    freeze_all_but_last_layers(model, profile["train_last_layers"])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=profile["lr"], weight_decay=0.0)
    collate = CausalLMCollator(tokenizer.pad_token_id)
    isolators = {m: attach_epi(model, optimizer, make_config(m, profile)) for m in methods}
    started, shared_losses = time.time(), []
    train_steps(model, optimizer, list(isolators.values()), batches[tasks[0]], encoded, collate, shared_losses)
    first = {tasks[0]: evaluate(model, tokenizer, evaluation, tasks[:1])}
    shared_seconds = time.time() - started
    print(f"  [sequential] after shared stage {tasks[0]} ({shared_seconds:.0f}s): "
          f"{ {t: a['acc'] for t, a in first[tasks[0]].items()} }", flush=True)
    weights, optimizer_state = trainable_state(model), copy.deepcopy(optimizer.state_dict())
    results = []
    for method in methods:
        started = time.time()
        restore_trainable(model, weights)
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))
        isolator, stages, losses = isolators[method], dict(first), list(shared_losses)
        for i, task in enumerate(tasks[1:], start=1):
            train_steps(model, optimizer, [isolator], batches[task], encoded, collate, losses)
            stages[task] = evaluate(model, tokenizer, evaluation, tasks[:i + 1])
            print(f"  [{method}/sequential] after stage {task}: "
                  f"{ {t: a['acc'] for t, a in stages[task].items()} }", flush=True)
        results.append(summarise(method, "sequential", len(losses), shared_seconds + time.time() - started,
                                 stages[tasks[-1]], stages, losses, isolator, model, tokenizer, probe, profile))
    return results


def run_mixed(method, profile, base_state, model, tokenizer, batches, encoded, evaluation, probe, seed):
    tasks = list(profile["tasks"])
    model.load_state_dict(base_state)
    freeze_all_but_last_layers(model, profile["train_last_layers"])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=profile["lr"], weight_decay=0.0)
    isolator = attach_epi(model, optimizer, make_config(method, profile))
    started, losses = time.time(), []
    schedule = schedule_batches(batches, tasks, "mixed", seed)
    train_steps(model, optimizer, [isolator], schedule, encoded, CausalLMCollator(tokenizer.pad_token_id), losses)
    final = evaluate(model, tokenizer, evaluation, tasks)
    return summarise(method, "mixed", len(losses), time.time() - started, final, {}, losses, isolator, model,
                     tokenizer, probe, profile)


def write_report(args, profile, report, out_dir):
    atomic_write_text(out_dir / "epi_quality.json", json.dumps(report, indent=2))
    tasks = profile["tasks"]
    n_eval = profile["eval_per_task"]
    base = report["base"]
    lines = ["# EPI quality", "",
             f"Model `{args.model}`, profile `{args.profile}`, seed {args.seed}. Tasks {', '.join(tasks)}; "
             f"{profile['steps_per_task']} AdamW steps per task x batch {profile['batch_size']} (label-balanced, "
             f"task-homogeneous; {profile['train_per_task']} training examples per task), lr {profile['lr']} constant, "
             f"no weight decay, max length {profile['max_length']} tokens (texts cut to {profile['text_words']} words), "
             + (f"only the last {profile['train_last_layers']} of 30 transformer blocks (+ final norm) trainable "
                f"({report['trainable_params'] / 1e6:.1f}M of {report['total_params'] / 1e6:.1f}M parameters). "
                if profile["train_last_layers"] else f"all {report['trainable_params'] / 1e6:.1f}M parameters trainable. ")
             + f"Isolation (static, epi): ratio {profile['isolation_ratio']} per tensor, fisher element importance, "
             f"EMA decay 0.9; epi warmup {profile['warmup_steps']} steps, mask refresh every "
             f"{profile['update_interval']} steps, release patience {profile['release_patience']}; static mask "
             f"measured over each task's first {profile['probe_steps']} steps. Every method sees the same batches.", "",
             f"Eval: {n_eval} held-out, label-balanced examples per task (one example = {1 / n_eval:.3f}; chance = "
             + ", ".join(f"{t} {1 / len(report['labels'][t]):.2f}" for t in tasks)
             + "), scored by constrained choice: the label token with the highest log-likelihood after the prompt. "
             "`greedy` = the label token is also the argmax over the whole vocabulary (first token of a free greedy "
             f"answer). Probe: completion NLL (nats/token) on {profile['probe_examples']} held-out CodeAlpaca examples "
             f"(max {profile['probe_max_length']} tokens).", "",
             f"Command: `{report['command']}`", ""]
    if not report.get("complete", True):
        lines += ["**Partial: the run was still going when this was written; only the runs listed below had "
                  "finished.**", ""]
    lines += [
             f"Machine: {report['machine']}; total wall time {report['wall_seconds'] / 60:.1f} min "
             f"({report['train_steps_run']} optimizer steps run in all).", "",
             "Base model before training: accuracy " + ", ".join(
                 f"{t} {base['accuracy'][t]:.3f} (greedy {base['greedy'][t]:.3f})" for t in tasks)
             + f"; probe NLL {base['probe_nll']:.3f}.", "",
             "| schedule | method | " + " | ".join(f"{t} acc (greedy)" for t in tasks)
             + " | mean acc | forgetting | probe NLL (base " f"{base['probe_nll']:.3f}) | train+eval (s) |",
             "|" + "---|" * (len(tasks) + 6)]
    for r in report["runs"]:
        forgetting = f"{r['mean_forgetting']:+.3f}" if r["mean_forgetting"] is not None else "n/a"
        lines.append(f"| {r['schedule']} | {r['method']} | "
                     + " | ".join(f"{r['final_accuracy'][t]:.3f} ({r['final_greedy_accuracy'][t]:.2f})"
                                  if r.get("final_greedy_accuracy") else f"{r['final_accuracy'][t]:.3f} (n/a)" for t in tasks)
                     + f" | {r['mean_accuracy']:.3f} | {forgetting} | {r['probe_nll']:.3f} | {r['train_seconds']:.0f} |")
    lines += ["", "Forgetting (sequential only) = accuracy right after the task's own stage minus final accuracy, "
              "averaged over the tasks before the last one; positive = forgotten.", "",
              "Per-stage accuracies (sequential; the first stage is shared by all methods):", ""]
    for r in report["runs"]:
        if r["schedule"] == "sequential":
            stages = "; ".join(f"after {s}: " + ", ".join(f"{t} {a:.3f}" for t, a in acc.items())
                               for s, acc in r["stages"].items())
            lines.append(f"- {r['method']}: {stages}")
    lines += ["", "Predicted-label shares at the end (a collapsed classifier shows up here):", ""]
    for r in report["runs"]:
        if not r.get("final_predicted_share"):
            continue
        lines.append(f"- {r['schedule']}/{r['method']}: " + "; ".join(
            f"{t}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["final_predicted_share"][t].items()) for t in tasks))
    lines += ["", "Protected fraction of the trainable units at the end (union over tensors):", ""]
    for r in report["runs"]:
        if r.get("protected_fraction"):
            lines.append(f"- {r['schedule']}/{r['method']}: "
                         + ", ".join(f"{t} {v:.3f}" for t, v in r["protected_fraction"].items()))
    lines += ["", f"Noise: one seed, {n_eval} eval examples per task (one example = {1 / n_eval:.3f}; the binomial "
              f"standard error of an accuracy near 0.8 is about {(0.8 * 0.2 / n_eval) ** 0.5:.2f}), "
              f"{profile['probe_examples']} probe examples. All methods are scored on the same examples, so "
              "differences between them are paired, but differences of a few examples are noise."]
    atomic_write_text(out_dir / "epi_quality.md", "\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="small")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", str(ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--schedules", default="sequential,mixed")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--tasks", default=None, help="comma-separated subset/order of the profile's tasks")
    parser.add_argument("--steps-per-task", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--smoke", action="store_true", help="a 1-step-per-task check of the script itself")
    args = parser.parse_args(argv)
    profile = dict(PROFILES[args.profile])
    if args.tasks:
        profile["tasks"] = tuple(args.tasks.split(","))
    if args.steps_per_task:
        profile["steps_per_task"] = args.steps_per_task
    if args.lr:
        profile["lr"] = args.lr
    if args.smoke:
        profile.update(steps_per_task=2, eval_per_task=8, train_per_task=16, probe_examples=2, warmup_steps=1,
                       update_interval=1, probe_steps=1)
    data_root = Path(args.data_root) / "sft"
    if not data_root.is_dir():
        parser.error(f"--data-root: {data_root} does not exist (see /work/shared/datasets/sft/README.md)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    from sft_core.hub import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model)
    rng = random.Random(args.seed)
    tasks = list(profile["tasks"])
    train, evaluation = {}, {}
    for task in tasks:
        train[task], evaluation[task] = LOADERS[task](data_root, rng, profile["train_per_task"],
                                                      profile["eval_per_task"], profile)
    probe = load_probe(data_root, rng, profile["probe_examples"])
    encoded = {t: [tokenize_messages(item["messages"], tokenizer, profile["max_length"]) for item in train[t]]
               for t in tasks}
    batches = make_batches(train, profile, args.seed)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    freeze_all_but_last_layers(model, profile["train_last_layers"])
    trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base_eval = evaluate(model, tokenizer, evaluation, tasks)
    base = {"accuracy": {t: a["acc"] for t, a in base_eval.items()},
            "greedy": {t: a["greedy"] for t, a in base_eval.items()},
            "predicted_share": {t: a["predicted"] for t, a in base_eval.items()},
            "probe_nll": probe_nll(model, tokenizer, probe, profile["probe_max_length"])}
    print(f"base ({time.time() - started:.0f}s): {base}", flush=True)
    methods = args.methods.split(",")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for schedule in args.schedules.split(","):
        if schedule == "sequential":
            runs += run_sequential(methods, profile, base_state, model, tokenizer, batches, encoded, evaluation, probe)
            write_report(args, profile, make_report(args, profile, model, evaluation, batches, base, runs, started,
                                                    trainable_params, argv, complete=False), out_dir)
        else:
            for m in methods:
                runs.append(run_mixed(m, profile, base_state, model, tokenizer, batches, encoded, evaluation, probe,
                                      args.seed))
                write_report(args, profile, make_report(args, profile, model, evaluation, batches, base, runs, started,
                                                        trainable_params, argv, complete=False), out_dir)
    write_report(args, profile, make_report(args, profile, model, evaluation, batches, base, runs, started,
                                            trainable_params, argv, complete=True), out_dir)
    print((out_dir / "epi_quality.md").read_text())


def make_report(args, profile, model, evaluation, batches, base, runs, started, trainable_params, argv, complete):
    tasks = list(profile["tasks"])
    steps_run = sum((len(tasks) - 1 if r["schedule"] == "sequential" else len(tasks)) * profile["steps_per_task"]
                    for r in runs) + (profile["steps_per_task"] if any(r["schedule"] == "sequential" for r in runs) else 0)
    return {"complete": complete,
            "command": "python benchmarks/epi_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, "
                       f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
            "model": args.model, "profile": args.profile, "profile_settings": profile, "seed": args.seed,
            "trainable_params": trainable_params, "total_params": sum(p.numel() for p in model.parameters()),
            "labels": {t: sorted({e["label"] for e in evaluation[t]}) for t in tasks},
            "mixed_task_order": [t for t, _ in schedule_batches(batches, tasks, "mixed", args.seed)],
            "base": base, "runs": runs, "train_steps_run": steps_run, "wall_seconds": time.time() - started}


if __name__ == "__main__":
    main()
