"""SRM vs a scalar reward model on the same backbone and data; accuracy on held-out prompts.

Trains on RM-Bench (chat, code, safety-refuse, safety-response) + IFBench with the canonical prompt-level split
(splits/preference-split.json), evaluates on the test prompts: RM-Bench easy / normal / hard over the 3x3 style
matrix and IFBench by level. Writes docs/results/srm_quality.{json,md}.

    .venv/bin/python benchmarks/srm_quality.py [--data-root ../shared/datasets] [--with-likelihood]

CPU budget: the encoder is frozen and its pooled outputs (plus every frozen side branch's features) are computed
once per response and cached, so both models train on identical cached encoder outputs; only heads, scorers and
the gate (SRM) or the single head (scalar) are trained.
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

from srm import SRMModel  # noqa: E402
from srm.branches import FeatureCache  # noqa: E402
from srm.data import load_groups, select_split  # noqa: E402
from srm.evaluation import evaluate_groups  # noqa: E402
from srm.scoring import SRMScorer  # noqa: E402
from srm.trainer import build_training_items, train_srm  # noqa: E402

RMBENCH_FILES = ["rm-bench/chat_filtered.json", "rm-bench/code_filtered.json",
                 "rm-bench/safety-refuse_filtered.json", "rm-bench/safety-response_filtered.json"]
IFBENCH_FILE = "ifbench/data.converted.json"
SRM_DIMENSIONS = ["correctness", "instruction_following", "safety", "style:style", "relevance:similarity"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT",
                                                              os.path.join(ROOT, "..", "shared", "datasets")))
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--similarity-max-length", type=int, default=128)
    parser.add_argument("--with-likelihood", action="store_true",
                        help="add the smollm2-135m likelihood branch (slow on CPU: ~1 s per response)")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (results report the mean)")
    parser.add_argument("--cache", default=os.path.join(ROOT, "runs", "srm_quality", "features.safetensors"))
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "docs", "results"))
    parser.add_argument("--limit", type=int, default=0, help="use only the first N prompts per split (smoke runs)")
    return parser.parse_args(argv)


def load_data(data_root: str, limit: int):
    split_path = os.path.join(data_root, "splits", "preference-split.json")
    for path in [split_path, *(os.path.join(data_root, f) for f in RMBENCH_FILES + [IFBENCH_FILE])]:
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}; pass --data-root (or set SFTKIT_DATA_ROOT)")
    with open(split_path, encoding="utf-8") as handle:
        split = json.load(handle)
    groups, _ = load_groups([os.path.join(data_root, f) for f in RMBENCH_FILES + [IFBENCH_FILE]])
    train, test = select_split(groups, split, "train"), select_split(groups, split, "test")
    test_prompts = {g.prompt for g in test}
    overlap = [g for g in train if g.prompt in test_prompts]  # same text under two ids: keep it out of training
    train = [g for g in train if g.prompt not in test_prompts]
    if limit:
        train, test = train[:limit], test[:limit]
    return train, test, len(overlap)


def build_model(args, scalar: bool):
    torch.manual_seed(getattr(args, "seed", 0))
    dimensions = SRM_DIMENSIONS + (["fluency:likelihood"] if args.with_likelihood else [])
    return SRMModel.from_backbone(
        args.backbone, dimensions=None if scalar else dimensions, scalar_baseline=scalar, freeze_backbone=True,
        max_sequence_length=args.max_length, max_prompt_length=args.max_prompt_length,
        branch_settings={"similarity": {"model": "minilm-l6", "max_length": args.similarity_max_length},
                         "likelihood": {"model": "smollm2-135m", "max_length": args.max_length,
                                        "max_prompt_length": args.max_prompt_length}})


def run_one(args, name: str, scalar: bool, train, test, cache: FeatureCache, tokenizer) -> dict:
    model = build_model(args, scalar)
    started = time.time()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = train_srm(model, tokenizer, train, output_dir, tuner="full", feature_cache=cache, save=False,
                            num_train_epochs=args.epochs, batch_size=args.batch_size, head_learning_rate=args.head_lr,
                            seed=args.seed, save_checkpoints=False, logging_steps=200)
    train_seconds = time.time() - started
    metrics = evaluate_groups(SRMScorer(model, tokenizer, batch_size=64, feature_cache=cache, device="cpu"), test)
    items = build_training_items(train, model.config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"[{name}] trained in {train_seconds:.0f}s: accuracy {metrics['accuracy']:.3f}", flush=True)
    return {"name": name, "metrics": metrics, "train_seconds": round(train_seconds, 1),
            "optimizer_steps": trainer.state.global_step, "train_items": len(items),
            "train_tasks": sorted({i["task"] for i in items}), "trainable_parameters": trainable,
            "dimensions": model.config.dimension_names}


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}"


HEADLINE_KEYS = ("rm_easy", "rm_normal", "rm_hard", "rm_average", "if_level-1", "if_level-2", "if_level-3",
                 "ifbench", "all_pairs")


def headline(metrics: dict) -> dict:
    rm, domains = metrics.get("rm_bench", {}), metrics["by_domain"]
    values = {"rm_easy": rm.get("easy"), "rm_normal": rm.get("normal"), "rm_hard": rm.get("hard"),
              "rm_average": rm.get("average"), "ifbench": metrics["by_source"].get("ifbench", {}).get("accuracy"),
              "all_pairs": metrics["accuracy"]}
    for level in ("level-1", "level-2", "level-3"):
        values[f"if_{level}"] = domains.get(level, {}).get("accuracy")
    for domain, cells in rm.get("by_domain", {}).items():
        values[f"rm_{domain}"] = cells["average"]
    return values


def mean_headline(runs: list[dict]) -> dict:
    keys = {k for r in runs for k in r["headline"]}
    out = {}
    for key in keys:
        values = [r["headline"].get(key) for r in runs if r["headline"].get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


def _row(name: str, values: dict) -> str:
    return f"| {name} | " + " | ".join(_pct(values.get(k)) for k in HEADLINE_KEYS) + " |"


def markdown(report: dict) -> str:
    header = ("| model | RM-Bench easy | normal | hard | avg | IFBench L1 | L2 | L3 | IFBench all | all pairs |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    seeds = report["budget"]["seeds"]
    mean_rows = [_row(f"{name} (mean of {len(seeds)} seeds)", values) for name, values in report["mean"].items()]
    seed_rows = [_row(f"{r['name']}, seed {r['seed']}", r["headline"]) for r in report["runs"]]
    first = report["runs"][0]["metrics"]
    counts = (f"test pairs: RM-Bench {first.get('rm_bench', {}).get('prompts', 0)} prompts x 9 comparisons; IFBench "
              + ", ".join(f"{lvl} {first['by_domain'].get(lvl, {}).get('pairs', 0)}"
                          for lvl in ("level-1", "level-2", "level-3")) + " pairs")
    domain_rows = []
    for name, values in report["mean"].items():
        for domain in sorted(first.get("rm_bench", {}).get("by_domain", {})):
            domain_rows.append(f"| {name} | {domain} | {first['rm_bench']['by_domain'][domain]['prompts']} | "
                               f"{_pct(values.get('rm_' + domain))} |")
    srm_run = next((r for r in report["runs"] if r["metrics"]["dimensions"]), None)
    dim_rows = [f"| {name} | {_pct(v['accuracy'])} | {v['pairs']} |"
                for name, v in (srm_run["metrics"]["dimensions"] if srm_run else {}).items()]
    b = report["budget"]
    delta = report["srm_minus_scalar_points"]
    return "\n".join([
        "# SRM vs scalar reward model (held-out prompts)", "",
        f"Pairwise accuracy in % on the test prompts of `splits/preference-split.json` "
        f"({report['data']['test_groups']} test / {report['data']['train_groups']} train response groups; {counts}). "
        "RM-Bench: easy = chosen more styled than rejected, normal = same style, hard = chosen less styled; "
        "avg = all 9 cells.", "",
        header, *mean_rows, "",
        f"SRM minus scalar (seed means): RM-Bench avg {delta['rm_average']:+.1f} points, IFBench "
        f"{delta['ifbench']:+.1f}, all pairs {delta['all_pairs']:+.1f} (target: +5).", "",
        "Per seed:", "", header, *seed_rows, "",
        "RM-Bench average accuracy by domain (seed means):", "",
        "| model | domain | test prompts | avg |", "|---|---|---|---|", *domain_rows, "",
        f"SRM per-dimension accuracy (the dimension's own score, seed {srm_run['seed'] if srm_run else '-'}) on test "
        "pairs labelled for that dimension:", "",
        "| dimension | accuracy | labelled pairs |", "|---|---|---|", *dim_rows, "",
        "## Budget and setup", "",
        f"- command: `{report['command']}`",
        f"- backbone `{b['backbone']}` frozen, its pooled outputs cached; max {b['max_length']} tokens for "
        f"prompt+response, {b['max_prompt_length']} for the prompt, {b['similarity_max_length']} for the similarity "
        f"branch; {b['epochs']} epochs, batch {b['batch_size']} response groups, head lr {b['head_lr']}, "
        f"seeds {', '.join(map(str, seeds))}, tuner full; likelihood branch {'on' if b['with_likelihood'] else 'off'}.",
        f"- training data: RM-Bench train prompts (all 9 chosen x rejected pairs per prompt + style-only pairs) and "
        f"IFBench train pairs; {report['data']['dropped_overlap']} train groups whose prompt text also occurs in the "
        f"test split were dropped.",
        *[f"- {r['name']} (seed {r['seed']}): {r['train_items']} task-tagged items ({', '.join(r['train_tasks'])}), "
          f"{r['optimizer_steps']} optimizer steps, {r['trainable_parameters']:,} trainable parameters, "
          f"trained in {r['train_seconds']} s" for r in report["runs"]],
        f"- feature/encoder caching took {report['timing']['features_seconds']} s (near 0 when the cache file already "
        f"held every response); total wall time {report['timing']['total_seconds']} s.",
        f"- machine: {report['machine']}.", ""])


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    train, test, dropped = load_data(args.data_root, args.limit)
    print(f"train groups {len(train)}, test groups {len(test)} (dropped {dropped} overlapping)", flush=True)
    from transformers import AutoTokenizer

    from sft_core.hub import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.backbone))
    cache = FeatureCache(args.cache)
    # Fill the cache once (both models read the same encoder outputs; the SRM also reads its side branches).
    features_started = time.time()
    from srm.trainer import precompute_group_tensors

    warm = build_model(args, scalar=False)
    precompute_group_tensors(warm, tokenizer, train + test, cache)
    features_seconds = time.time() - features_started
    del warm
    runs = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        args.seed = seed
        for name, scalar in (("scalar RM", True), ("SRM", False)):
            run = run_one(args, name, scalar, train, test, cache, tokenizer)
            run["seed"], run["headline"] = seed, headline(run["metrics"])
            runs.append(run)
    cache.save()
    mean = {name: mean_headline([r for r in runs if r["name"] == name]) for name in ("scalar RM", "SRM")}

    def points(key):
        a, b = mean["SRM"].get(key), mean["scalar RM"].get(key)
        return round(100 * (a - b), 1) if a is not None and b is not None else 0.0

    report = {
        "command": " ".join(["python", "benchmarks/srm_quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "mean": mean,
        "srm_minus_scalar_points": {key: points(key) for key in ("rm_average", "rm_easy", "rm_normal", "rm_hard",
                                                                 "ifbench", "all_pairs")},
        "runs": runs,
        "data": {"train_groups": len(train), "test_groups": len(test), "dropped_overlap": dropped,
                 "data_root": os.path.abspath(args.data_root)},
        "budget": {"backbone": args.backbone, "max_length": args.max_length, "max_prompt_length": args.max_prompt_length,
                   "similarity_max_length": args.similarity_max_length, "epochs": args.epochs,
                   "batch_size": args.batch_size, "head_lr": args.head_lr, "seeds": [r["seed"] for r in runs][::2],
                   "frozen_backbone": True, "with_likelihood": args.with_likelihood, "limit": args.limit},
        "timing": {"features_seconds": round(features_seconds, 1), "total_seconds": round(time.time() - started, 1)},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), "
                   f"torch {torch.__version__}, {platform.python_version()}",
    }
    os.makedirs(args.output_dir, exist_ok=True)
    for name, text in (("srm_quality.json", json.dumps(report, indent=2) + "\n"), ("srm_quality.md", markdown(report))):
        fd, tmp = tempfile.mkstemp(dir=args.output_dir, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(args.output_dir, name))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
