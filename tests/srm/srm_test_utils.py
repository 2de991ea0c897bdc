"""Tiny offline SRMs and data files for the srm tests."""

from __future__ import annotations

import json
import os

from sft_core.testing import tiny_causal_lm, tiny_encoder

PROMPTS = ["what is the capital of france", "write a good movie name", "how is the weather today",
           "what is the sum of two and two", "name a cat", "what day is it tomorrow"]
GOOD = ["paris is the capital of france", "the best movie is a great film", "the weather today is cold",
        "the sum is 4", "the cat name is key", "tomorrow is a good day"]
BAD = ["london", "i hate this", "no", "it is 5", "dog", "sad"]


def save_tiny_models(root: str) -> dict[str, str]:
    """Saves a tiny encoder (backbone), a second tiny encoder (similarity) and a tiny causal LM (likelihood)."""
    paths = {}
    for name, factory, seed in (("encoder", tiny_encoder, 0), ("similarity", tiny_encoder, 1),
                                ("likelihood", tiny_causal_lm, 2)):
        model, tokenizer = factory(seed=seed)
        path = os.path.join(root, name)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[name] = path
    return paths


def tiny_branch_settings(paths: dict[str, str]) -> dict:
    return {"similarity": {"model": paths["similarity"], "max_length": 64},
            "likelihood": {"model": paths["likelihood"], "max_length": 64, "max_prompt_length": 32}}


def write_jsonl(path: str, records: list) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def trl_records(n: int = 6) -> list[dict]:
    return [{"prompt": PROMPTS[i % 6], "chosen": GOOD[i % 6], "rejected": BAD[i % 6]} for i in range(n)]


def rmbench_records(n: int = 4) -> list[dict]:
    """RM-Bench-shaped records: 3 chosen + 3 rejected in concise, detailed, detailed-markdown order."""
    records = []
    for i in range(n):
        good, bad = GOOD[i % 6], BAD[i % 6]
        records.append({"id": i, "subset": "toy", "prompt": PROMPTS[i % 6],
                        "chosen": [good, good + " and that is good", "# answer\n- " + good + "\n- good"],
                        "rejected": [bad, bad + " and that is bad", "# answer\n- " + bad + "\n- bad"]})
    return records


_TRAINED: dict[str, str] = {}


def trained_tiny_srm(root: str, scalar: bool = False) -> str:
    """Train (once per process) a tiny SRM through `srm train` and return its directory."""
    key = "scalar" if scalar else "srm"
    if key in _TRAINED and os.path.exists(_TRAINED[key]):
        return _TRAINED[key]
    from srm.cli import main

    paths = save_tiny_models(os.path.join(root, "models"))
    data = write_jsonl(os.path.join(root, f"train-{key}.jsonl"), trl_records(12) + rmbench_records(4))
    output = os.path.join(root, key)
    args = ["train", "--backbone", paths["encoder"], "--data", data, "--output", output, "--epochs", "2",
            "--batch-size", "4", "--max-length", "64", "--max-prompt-length", "32",
            "--similarity-model", paths["similarity"], "--similarity-max-length", "64",
            "--likelihood-model", paths["likelihood"]]
    if scalar:
        args.append("--scalar-baseline")
    assert main(args) == 0
    _TRAINED[key] = output
    return output
