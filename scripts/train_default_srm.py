"""Build the SRM shipped in ``srm/default_model/`` (what ``srm score`` / ``srm serve`` use without ``--model``).

    .venv/bin/python scripts/train_default_srm.py [--data-root ../shared/datasets] [--output srm/default_model]

Recipe (the one ``benchmarks/srm_quality.py`` measures as ``srm``): frozen offline ``minilm-l6`` encoder,
dimensions correctness / instruction_following / safety (heads), style (text statistics), relevance (shared-encoder
cosine + cross-encoder head); trained on the *train* part of ``splits/preference-split.json`` (RM-Bench
chat/code/safety-refuse/safety-response + IFBench; prompts that also occur in the test part are dropped) plus one
off-prompt negative per train prompt (srm.negatives). Only the parts on top of the encoder are saved
(``backbone_weights="offline"``), with the tokenizer and a ``training_summary.json`` (data, budget, and accuracy on
the split's test prompts and their off-prompt negatives).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sft_core.atomic_io import atomic_write_text  # noqa: E402
from srm import SRMModel  # noqa: E402
from srm.branches import FeatureCache  # noqa: E402
from srm.data import load_groups, select_split  # noqa: E402
from srm.evaluation import evaluate_groups  # noqa: E402
from srm.negatives import assign_stable_ranks, embed_prompts, offprompt_groups, with_ranks_of  # noqa: E402
from srm.scoring import SRMScorer  # noqa: E402
from srm.trainer import save_srm, train_srm  # noqa: E402

DATA_FILES = ["rm-bench/chat_filtered.json", "rm-bench/code_filtered.json", "rm-bench/safety-refuse_filtered.json",
              "rm-bench/safety-response_filtered.json", "ifbench/data.converted.json"]
DIMENSIONS = ["correctness", "instruction_following", "safety", "style:style", "relevance:similarity"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT",
                                                              os.path.join(ROOT, "..", "shared", "datasets")))
    parser.add_argument("--output", default=os.path.join(ROOT, "srm", "default_model"))
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="keep this share of the train prompts of each domain (stable hash order; CPU budget)")
    parser.add_argument("--cache", default=os.path.join(ROOT, "runs", "srm_quality", "features.safetensors"),
                        help="feature cache shared with benchmarks/srm_quality.py (warm after it ran)")
    return parser.parse_args(argv)


def _ifbench(metrics: dict) -> float:
    """Pair-weighted accuracy over the IFBench levels."""
    levels = {k: v for k, v in metrics["by_domain"].items() if k.startswith("level-")}
    pairs = sum(v["pairs"] for v in levels.values())
    return sum(v["accuracy"] * v["pairs"] for v in levels.values()) / pairs if pairs else 0.0


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    started = time.time()
    split_path = os.path.join(args.data_root, "splits", "preference-split.json")
    if not os.path.exists(split_path):
        print(f"error: {split_path} not found; pass --data-root (or set SFTKIT_DATA_ROOT)", file=sys.stderr)
        return 2
    with open(split_path, encoding="utf-8") as handle:
        split = json.load(handle)
    groups, _ = load_groups([os.path.join(args.data_root, f) for f in DATA_FILES], data_root=args.data_root)
    train, test = select_split(groups, split, "train"), select_split(groups, split, "test")
    test_prompts = {g.prompt for g in test}
    train = [g for g in train if g.prompt not in test_prompts]
    train = assign_stable_ranks(train)

    from transformers import AutoTokenizer

    from sft_core.hub import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.backbone))
    torch.manual_seed(args.seed)
    model = SRMModel.from_backbone(args.backbone, dimensions=DIMENSIONS, freeze_backbone=True,
                                   max_sequence_length=args.max_length)
    os.makedirs(os.path.dirname(args.cache), exist_ok=True)
    cache = FeatureCache(args.cache)
    vectors = embed_prompts(model, tokenizer, [g.prompt for g in train + test], cache)
    off_train = with_ranks_of(offprompt_groups(train, vectors), train)  # neighbours from the whole train part
    off_test = offprompt_groups(test, vectors)
    train = [g for g in train if g.rank < args.train_fraction]
    off_train = [g for g in off_train if g.rank < args.train_fraction]
    print(f"train: {len(train)} response groups + {len(off_train)} off-prompt groups", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = train_srm(model, tokenizer, train + off_train, scratch, tuner="full", task_grouping="single",
                            feature_cache=cache, save=False, num_train_epochs=args.epochs,
                            batch_size=args.batch_size, head_learning_rate=args.head_lr, seed=args.seed,
                            save_checkpoints=False, show_progress=False)
    model.eval()
    scorer = SRMScorer(model, tokenizer, batch_size=64, feature_cache=cache, device="cpu")
    split_metrics = evaluate_groups(scorer, test)
    off_metrics = evaluate_groups(scorer, off_test)
    cache.save()

    model.config.backbone_weights = "offline"  # ship only what sits on top of the offline encoder
    save_srm(model, tokenizer, args.output)
    size = sum(os.path.getsize(os.path.join(args.output, f)) for f in os.listdir(args.output))
    rm = split_metrics.get("rm_bench", {})
    summary = {
        "backbone": args.backbone, "dimensions": model.config.dimension_names,
        "data": {"files": DATA_FILES, "split": "splits/preference-split.json (train part)",
                 "train_fraction": args.train_fraction, "train_groups": len(train),
                 "offprompt_train_groups": len(off_train)},
        "budget": {"epochs": args.epochs, "batch_size": args.batch_size, "head_lr": args.head_lr, "seed": args.seed,
                   "max_sequence_length": args.max_length, "optimizer_steps": trainer.state.global_step,
                   "frozen_backbone": True},
        "test_scores_percent": {
            "rm_bench_avg": round(100 * rm.get("average", 0.0), 1),
            "rm_bench_easy_normal_hard": [round(100 * rm.get(k, 0.0), 1) for k in ("easy", "normal", "hard")],
            "ifbench": round(100 * _ifbench(split_metrics), 1),
            "all_test_pairs": round(100 * split_metrics["accuracy"], 1),
            "offprompt_negatives": round(100 * off_metrics["accuracy"], 1)},
        "folder_bytes": size,
        "seconds": round(time.time() - started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
    }
    atomic_write_text(os.path.join(args.output, "training_summary.json"), json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
