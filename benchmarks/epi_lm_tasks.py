"""Causal-LM tasks for the `quality` profile of benchmarks/epi_quality.py (smollm2-135m).

Every example is a chat conversation (user prompt, assistant answer) tokenised by the toolkit's own SFT path
(`sft_core.sft_data.tokenize_messages`: the model's chat template, loss on the answer tokens only), so the
benchmark trains exactly what `sft-core train` would.

Tasks (from --data-root/sft):
- `sst2`: sentiment, answer `positive` / `negative`; train: sentences of >= 6 words from the phrase-level
  train.tsv, eval: test.tsv.
- `agnews`: 4-way topic, answer `World` / `Sports` / `Business` / `Sci/Tech`; train: a seeded sample of
  dev.tsv, eval: test.tsv.
- `gsm8k`: the worked solution ending in `#### <number>` (generative); train: train.jsonl, eval: test.jsonl.

Scores. Classification: each answer option is scored by the log-likelihood of its tokens (with the end of
turn) given the prompt; `acc` = the top option is gold; `calibrated_acc` = the same after subtracting each
option's mean log-likelihood over the eval set (removes a shifted label prior, which a fixed-threshold
accuracy confuses with forgetting); `auc` = ROC AUC of the option scores (binary: margin; 4-way: macro
one-vs-rest of the softmax). Generative: `acc` = teacher-forced next-token accuracy on the reference
solution (greedy decoding of a 135M model scores ~0 exact-match on GSM8K, so exact match cannot show
forgetting), `nll` = mean token NLL. General-ability probe: mean token NLL of 100 CodeAlpaca outputs given
their instruction (a task no run trains on); its rise from the base model = lost general ability.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from sft_core.sft_data import IGNORE_INDEX, CausalLMCollator, tokenize_messages

SST2_PROMPT = "Classify the sentiment of this movie review as positive or negative.\n\nReview: {text}"
AGNEWS_PROMPT = ("Classify the topic of this news article as World, Sports, Business or Sci/Tech.\n\n"
                 "Article: {text}")
OPTIONS = {"sst2": ["negative", "positive"], "agnews": ["World", "Sports", "Business", "Sci/Tech"]}
CLASSIFICATION_TASKS = tuple(OPTIONS)


def read_tsv(path: Path, header: bool):
    """Rows of a two-column TSV (text, label); malformed rows dropped."""
    import csv

    with open(path, encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r for r in (rows[1:] if header else rows) if len(r) == 2]


def balanced_sample(rng: random.Random, rows, n: int):
    """n (text, label) rows, labels as equal as possible, shuffled."""
    by_label = {}
    for text, label in rows:
        by_label.setdefault(label, []).append((text, label))
    labels = sorted(by_label)
    chosen = []
    for i, label in enumerate(labels):
        chosen += rng.sample(by_label[label], n // len(labels) + (1 if i < n % len(labels) else 0))
    rng.shuffle(chosen)
    return chosen


def load_lm_tasks(root: Path, tasks, n_train: int, n_eval: int, seed: int):
    """task -> (train conversations, eval examples); an eval example is (prompt, gold answer index or text)."""
    rng = random.Random(seed)
    out = {}
    for task in tasks:
        if task == "sst2":
            train = [(t, OPTIONS["sst2"][int(y)]) for t, y in read_tsv(root / "sst2" / "train.tsv", True)
                     if len(t.split()) >= 6]
            test = [(t, OPTIONS["sst2"][int(y)]) for t, y in read_tsv(root / "sst2" / "test.tsv", True)]
            prompt = SST2_PROMPT
        elif task == "agnews":
            train = [(t, y.strip()) for t, y in read_tsv(root / "agnews" / "dev.tsv", False)]
            test = [(t, y.strip()) for t, y in read_tsv(root / "agnews" / "test.tsv", False)]
            prompt = AGNEWS_PROMPT
        elif task == "gsm8k":
            def read(name):
                with open(root / "gsm8k" / name, encoding="utf-8") as handle:
                    return [json.loads(line) for line in handle if line.strip()]

            train_rows = rng.sample(read("train.jsonl"), n_train)
            test_rows = rng.sample(read("test.jsonl"), n_eval)
            out[task] = ([(r["question"], r["answer"]) for r in train_rows],
                         [(r["question"], r["answer"]) for r in test_rows])
            continue
        else:
            raise ValueError(f"unknown LM task {task!r}: expected sst2, agnews or gsm8k")
        options = OPTIONS[task]
        train = balanced_sample(rng, train, n_train)
        test = balanced_sample(rng, test, n_eval)
        out[task] = ([(prompt.format(text=t), y) for t, y in train],
                     [(prompt.format(text=t), options.index(y)) for t, y in test])
    return out


def load_probe_conversations(root: Path, n: int, seed: int):
    records = json.loads((root / "codealpaca" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    chosen = random.Random(seed + 7).sample(records, n)
    return [(r["instruction"] + ("\n\n" + r["input"] if r["input"] else ""), r["output"]) for r in chosen]


def conversation(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _answer_token_stats(model, collator, encoded, batch_size):
    """Per sequence: (sum of answer-token log-probs, answer tokens, correctly predicted answer tokens)."""
    device = _model_device(model)
    results = []
    for start in range(0, len(encoded), batch_size):
        batch = collator(encoded[start:start + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        targets = batch["labels"][:, 1:]
        counted = targets != IGNORE_INDEX
        safe_targets = targets.clamp(min=0)
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
        correct = (logits.argmax(-1) == safe_targets) & counted
        sums = (log_probs * counted).sum(-1)
        for row in range(len(sums)):
            results.append((float(sums[row]), int(counted[row].sum()), int(correct[row].sum())))
    return results


class LanguageModelBench:
    """Training items, evaluation and probe for the causal-LM profile; ``self.model`` is the model under test."""

    def __init__(self, profile, data, probe_pairs, tokenizer):
        self.tasks = list(profile["tasks"])
        self.steps_per_task = profile["steps_per_task"]
        self.max_length = profile["max_length"]
        self.eval_batch_size = profile.get("eval_batch_size", 16)
        self.collate = CausalLMCollator(tokenizer.pad_token_id)
        self.train_items = []
        self.eval_encoded = {}
        for task in self.tasks:
            train, evaluation = data[task]
            for prompt, answer in train:
                self.train_items.append({**tokenize_messages(conversation(prompt, answer), tokenizer, self.max_length),
                                         "task": task})
            if task in CLASSIFICATION_TASKS:
                options = OPTIONS[task]
                self.eval_encoded[task] = {
                    "options": len(options),
                    "gold": [gold for _, gold in evaluation],
                    "sequences": [tokenize_messages(conversation(prompt, option), tokenizer, self.max_length)
                                  for prompt, _ in evaluation for option in options]}
            else:
                self.eval_encoded[task] = {"sequences": [tokenize_messages(conversation(p, a), tokenizer, self.max_length)
                                                         for p, a in evaluation]}
        self.probe_encoded = [tokenize_messages(conversation(p, a), tokenizer, self.max_length) for p, a in probe_pairs]
        self.model = None
        self.data_collator = self.collate

    def evaluate(self, task: str) -> dict:
        model = self.model
        was_training = model.training
        model.eval()
        spec = self.eval_encoded[task]
        stats = _answer_token_stats(model, self.collate, spec["sequences"], self.eval_batch_size)
        model.train(was_training)
        if task not in CLASSIFICATION_TASKS:
            tokens = sum(n for _, n, _ in stats)
            return {"acc": sum(c for _, _, c in stats) / tokens, "nll": -sum(s for s, _, _ in stats) / tokens,
                    "calibrated_acc": None, "auc": None}
        k = spec["options"]
        scores = torch.tensor([s for s, _, _ in stats]).view(-1, k)
        gold = torch.tensor(spec["gold"])
        calibrated = scores - scores.mean(0, keepdim=True)
        return {"acc": float((scores.argmax(-1) == gold).float().mean()),
                "calibrated_acc": float((calibrated.argmax(-1) == gold).float().mean()),
                "auc": _auc(scores, gold, k),
                "predicted_share": [float((scores.argmax(-1) == c).float().mean()) for c in range(k)]}

    def probe(self) -> float:
        model = self.model
        was_training = model.training
        model.eval()
        stats = _answer_token_stats(model, self.collate, self.probe_encoded, self.eval_batch_size)
        model.train(was_training)
        return -sum(s for s, _, _ in stats) / sum(n for _, n, _ in stats)


def _auc(scores: torch.Tensor, gold: torch.Tensor, k: int) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(set(gold.tolist())) < k:
        return None
    if k == 2:
        return float(roc_auc_score(gold.numpy(), (scores[:, 1] - scores[:, 0]).numpy()))
    return float(roc_auc_score(gold.numpy(), torch.softmax(scores, -1).numpy(), multi_class="ovr", average="macro"))
