"""SRM vs a scalar reward model on the same backbone and data: held-out prompts and two generalization proxies.

    .venv/bin/python benchmarks/srm_quality.py [--data-root ../shared/datasets] [--seeds 0,1,2]

What it measures (all pairwise accuracy, %):

* **split**: train on the train prompts of ``splits/preference-split.json`` (RM-Bench chat/code/safety-refuse/
  safety-response + IFBench), test on its test prompts (RM-Bench 3x3 style matrix average, IFBench).
* **leave-one-domain-out (LODO)**: train on the train prompts of three RM-Bench domains + IFBench, test on every
  prompt (train and test part) of the fourth domain; the average over the four folds is the headline.
* **off-prompt negatives**: for each test prompt, the rejected answer is a good (chosen) answer to its nearest
  neighbour prompt by minilm-l6 embedding (neighbours come from the same part of the split; a neighbour whose
  cosine with the prompt is above ``--neighbour-max-cosine`` is skipped as a near-paraphrase); the model must
  prefer the on-prompt answer. RM-Bench prompts use their concise chosen answers on both sides, IFBench its
  chosen answers; one pair per prompt.

Recipes: ``scalar`` (one head on the pooled encoder), ``srm`` (current defaults: monotone feature scorers, gate
prior + dimension dropout, relevance cross-encoder trained on off-prompt negatives built from the *train*
prompts), and the pre-fix design ``srm-legacy`` / ``scalar-legacy`` (free scorers, no gate regularization, no
off-prompt training pairs) for the diagnosis. Zero-shot judges (prompt-response cosine of the shared encoder,
"prefer the shorter answer") are scored on the same sets.

CPU budget: the encoder is frozen; its pooled outputs (joint prompt+response pass: pooled output and pooled
response segment; prompt-alone pass) and the style features are computed once per text and cached in
``--cache``; only heads, scorers and gate (SRM) or the single head (scalar) are trained.
Writes docs/results/srm_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sft_core.atomic_io import atomic_write_text  # noqa: E402
from srm import SRMModel  # noqa: E402
from srm.branches import FeatureCache, StyleBranch  # noqa: E402
from srm.collate import EncoderEmbeddingBranch, truncated_responses  # noqa: E402
from srm.data import ResponseGroup, load_groups, select_split  # noqa: E402
from srm.evaluation import evaluate_groups  # noqa: E402
from srm.negatives import assign_stable_ranks, offprompt_groups, with_ranks_of  # noqa: E402
from srm.scoring import SRMScorer  # noqa: E402
from srm.trainer import train_srm  # noqa: E402

RMBENCH_DOMAINS = ("chat", "code", "safety-refuse", "safety-response")
RMBENCH_FILES = [f"rm-bench/{d}_filtered.json" for d in RMBENCH_DOMAINS]
IFBENCH_FILE = "ifbench/data.converted.json"
SRM_DIMENSIONS = ["correctness", "instruction_following", "safety", "style:style", "relevance:similarity"]

# name -> (scalar?, SRMConfig overrides, trains on off-prompt negatives?)
RECIPES = {
    "scalar": (True, {}, True),
    "srm": (False, {}, True),
    "scalar-legacy": (True, {}, False),
    "srm-legacy": (False, {"monotone_scorers": False, "gate_dropout": 0.0, "gate_prior_weight": 0.0,
                           "relevance_cross_head": False}, False),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT",
                                                              os.path.join(ROOT, "..", "shared", "datasets")))
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0,1,2", help="training seeds of the current recipes (means reported)")
    parser.add_argument("--lodo-seeds", default="", help="seeds of the LODO folds (default: --seeds)")
    parser.add_argument("--legacy-seeds", default="0", help="seeds of the pre-fix recipes (diagnosis only)")
    parser.add_argument("--recipes", default="scalar,srm,scalar-legacy,srm-legacy")
    parser.add_argument("--no-lodo", action="store_true", help="skip the leave-one-domain-out folds")
    parser.add_argument("--neighbour-max-cosine", type=float, default=0.9)
    parser.add_argument("--judge-pairs", type=int, default=0,
                        help="also probe the smollm2-135m P(Yes) judge branch on this many pairs per set (slow on CPU)")
    parser.add_argument("--stage", choices=("all", "features"), default="all",
                        help="features: only fill the cache (resumable, saved every chunk)")
    parser.add_argument("--cache", default=os.path.join(ROOT, "runs", "srm_quality", "features.safetensors"))
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "docs", "results"))
    parser.add_argument("--limit", type=int, default=0, help="use only the first N prompts per domain (smoke runs)")
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="keep this share of the train prompts of each domain (every k-th; CPU budget)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------
# data: split, LODO folds, off-prompt negatives
# ---------------------------------------------------------------------------------------------------------
def domain_of(group: ResponseGroup) -> str:
    return group.domain if group.dataset == "rm-bench" else "ifbench"


def load_data(data_root: str, limit: int):
    split_path = os.path.join(data_root, "splits", "preference-split.json")
    for path in [split_path, *(os.path.join(data_root, f) for f in RMBENCH_FILES + [IFBENCH_FILE])]:
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}; pass --data-root (or set SFTKIT_DATA_ROOT)")
    with open(split_path, encoding="utf-8") as handle:
        split = json.load(handle)
    groups, _ = load_groups([os.path.join(data_root, f) for f in RMBENCH_FILES + [IFBENCH_FILE]], data_root=data_root)
    train, test = select_split(groups, split, "train"), select_split(groups, split, "test")
    test_prompts = {g.prompt for g in test}
    dropped = [g for g in train if g.prompt in test_prompts]  # same text under two ids: keep it out of training
    train = [g for g in train if g.prompt not in test_prompts]
    if limit:
        train = [g for d in RMBENCH_DOMAINS + ("ifbench",) for g in [x for x in train if domain_of(x) == d][:limit]]
        test = [g for d in RMBENCH_DOMAINS + ("ifbench",) for g in [x for x in test if domain_of(x) == d][:limit]]
    return train, test, len(dropped)


# ---------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------
def build_model(args, recipe: str, seed: int):
    scalar, overrides, _ = RECIPES[recipe]
    torch.manual_seed(seed)
    return SRMModel.from_backbone(args.backbone, dimensions=None if scalar else SRM_DIMENSIONS,
                                  scalar_baseline=scalar, freeze_backbone=True, max_sequence_length=args.max_length,
                                  max_prompt_length=args.max_prompt_length, **overrides)


def fill_cache(model, tokenizer, groups: list[ResponseGroup], cache: FeatureCache, chunk: int = 256) -> float:
    """Encode every (prompt, response) once; saved after every chunk so an interrupted fill resumes."""
    started = time.time()
    prompts = [g.prompt for g in groups for _ in g.responses]
    responses = [r for g in groups for r in g.responses]
    unique_prompts = list(dict.fromkeys(prompts))
    prompt_branch = EncoderEmbeddingBranch(model, tokenizer, "prompt", show_progress=False)
    cache.get_or_compute(prompt_branch, unique_prompts, [""] * len(unique_prompts))
    cache.get_or_compute(StyleBranch(), prompts, responses)
    cache.save()
    joint = EncoderEmbeddingBranch(model, tokenizer, "joint", show_progress=False)
    todo = [i for i in range(len(prompts)) if cache.key(joint, prompts[i], responses[i]) not in cache.vectors]
    print(f"joint passes to compute: {len(todo)} of {len(prompts)}", file=sys.stderr, flush=True)
    for start in range(0, len(todo), chunk):
        rows = todo[start:start + chunk]
        cache.get_or_compute(joint, [prompts[i] for i in rows], [responses[i] for i in rows])
        cache.save()
        print(f"  {min(start + chunk, len(todo))}/{len(todo)} joint passes, {time.time() - started:.0f} s",
              file=sys.stderr, flush=True)
    return time.time() - started


class RecordingScorer:
    """Wraps a scorer to keep its results (gate weights and dimension scores for the diagnosis)."""

    def __init__(self, scorer):
        self.scorer, self.results = scorer, []

    def score(self, items):
        self.results = self.scorer.score(items)
        return self.results


def gate_means(results) -> dict[str, float]:
    if not results or not results[0].gates:
        return {}
    return {name: statistics.fmean(r.gates[name] for r in results) for name in results[0].gates}


def evaluate(model, tokenizer, cache, groups) -> tuple[dict, dict]:
    recorder = RecordingScorer(SRMScorer(model, tokenizer, batch_size=64, feature_cache=cache, device="cpu"))
    metrics = evaluate_groups(recorder, groups)
    return metrics, gate_means(recorder.results)


def train_one(args, recipe: str, seed: int, train_groups, cache, tokenizer):
    model = build_model(args, recipe, seed)
    started = time.time()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = train_srm(model, tokenizer, train_groups, output_dir, tuner="full", task_grouping="single",
                            feature_cache=cache, save=False, num_train_epochs=args.epochs, batch_size=args.batch_size,
                            head_learning_rate=args.head_lr, seed=seed, save_checkpoints=False, logging_steps=500,
                            show_progress=False)
    return model, {"train_seconds": round(time.time() - started, 1), "optimizer_steps": trainer.state.global_step,
                   "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}


# ---------------------------------------------------------------------------------------------------------
# zero-shot judges on the cached encoder outputs
# ---------------------------------------------------------------------------------------------------------
def zero_shot(model, tokenizer, cache, groups) -> dict[str, float]:
    """Pairwise accuracy of two untrained judges: cosine(prompt, response segment) of the frozen encoder, and
    'prefer the shorter answer' (characters)."""
    joint = EncoderEmbeddingBranch(model, tokenizer, "joint", show_progress=False)
    prompt_branch = EncoderEmbeddingBranch(model, tokenizer, "prompt", show_progress=False)
    hidden = model.backbone.config.hidden_size
    tallies = {"cosine": [], "shorter": []}
    for g in groups:
        emb = cache.get_or_compute(joint, [g.prompt] * len(g.responses), g.responses)[:, hidden:]
        p = cache.get_or_compute(prompt_branch, [g.prompt], [""])[0]
        cos = torch.nn.functional.cosine_similarity(emb, p.unsqueeze(0), dim=-1).tolist()
        for pair in g.pairs:
            if not pair.overall:
                continue
            for name, a, b in (("cosine", cos[pair.better], cos[pair.worse]),
                               ("shorter", -len(g.responses[pair.better]), -len(g.responses[pair.worse]))):
                tallies[name].append(1.0 if a > b else (0.5 if a == b else 0.0))
    return {k: (statistics.fmean(v) if v else None) for k, v in tallies.items()}


def judge_probe(test, off_test, pairs_per_set: int, cache) -> dict:
    """Cost and zero-shot accuracy of the smollm2-135m P("Yes") judge branch on the first ``pairs_per_set``
    pairs of three sets (off-prompt negatives, RM-Bench same-style pairs, IFBench pairs)."""
    from srm.branches import FEATURE_BRANCH_BUILDERS

    from srm.configuration_srm import DEFAULT_FEATURE_BRANCHES

    branch = FEATURE_BRANCH_BUILDERS["judge"](dict(DEFAULT_FEATURE_BRANCHES["judge"]), "cpu")
    sets = {"offprompt": [(g.prompt, g.responses[p.better], g.responses[p.worse]) for g in off_test for p in g.pairs],
            "rm-bench (same style)": [(g.prompt, g.responses[i % 3], g.responses[3 + i % 3])
                                      for i, g in enumerate(x for x in test if x.rmbench)],
            "ifbench": [(g.prompt, g.responses[g.pairs[0].better], g.responses[g.pairs[0].worse])
                        for g in test if not g.rmbench]}
    out, seconds, computed = {}, 0.0, 0
    for name, rows in sets.items():
        rows = rows[:pairs_per_set]
        prompts = [p for p, _, _ in rows for _ in (0, 1)]
        responses = [r for _, a, b in rows for r in (a, b)]
        todo = sum(cache.key(branch, p, r) not in cache.vectors for p, r in zip(prompts, responses))
        started = time.time()
        values = cache.get_or_compute(branch, prompts, responses)[:, 0]
        seconds += time.time() - started
        computed += todo
        cache.save()
        wins = [1.0 if values[2 * i] > values[2 * i + 1] else (0.5 if values[2 * i] == values[2 * i + 1] else 0.0)
                for i in range(len(rows))]
        out[name] = {"accuracy": statistics.fmean(wins) if wins else None, "pairs": len(rows)}
    out["seconds_per_response"] = round(seconds / computed, 2) if computed else None
    out["responses_computed"] = computed
    return out


def binomial_below_chance(accuracy: float, pairs: int) -> bool:
    """True when accuracy is significantly below 50% (one-sided normal approximation, p < 0.05). Pairs of
    one prompt are correlated, so this is lenient; it is a flag, not a test of the method."""
    if not pairs or accuracy is None:
        return False
    return (accuracy - 0.5) / (0.5 / pairs ** 0.5) < -1.645


# ---------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    started = time.time()
    train, test, dropped = load_data(args.data_root, args.limit)
    train = assign_stable_ranks(train)
    print(f"train groups {len(train)}, test groups {len(test)} (dropped {dropped} overlapping)", file=sys.stderr)
    from transformers import AutoTokenizer

    from sft_core.hub import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.backbone))
    os.makedirs(os.path.dirname(args.cache), exist_ok=True)
    cache = FeatureCache(args.cache)
    warm = build_model(args, "srm", 0)
    prompt_branch = EncoderEmbeddingBranch(warm, tokenizer, "prompt", show_progress=False)
    unique = list(dict.fromkeys(g.prompt for g in train + test))
    vectors = cache.get_or_compute(prompt_branch, unique, [""] * len(unique))
    prompt_vectors = dict(zip(unique, vectors))
    # Neighbours come from the whole train part; --train-fraction then keeps the lowest-ranked prompts (and their
    # off-prompt pairs) of every domain.
    off_train = with_ranks_of(offprompt_groups(train, prompt_vectors, args.neighbour_max_cosine), train)
    off_test = offprompt_groups(test, prompt_vectors, args.neighbour_max_cosine)
    train = [g for g in train if g.rank < args.train_fraction]
    off_train = [g for g in off_train if g.rank < args.train_fraction]
    # Test sets first, then train prompts in rank order: an interrupted fill (saved every chunk) serves the
    # evaluations and any smaller --train-fraction.
    by_rank = sorted(train + off_train, key=lambda g: g.rank)
    features_seconds = fill_cache(warm, tokenizer, test + off_test + by_rank, cache)
    if args.stage == "features":
        print(f"cache filled in {features_seconds:.0f} s", file=sys.stderr)
        return 0

    truncated = truncated_responses(tokenizer, warm.config, [g.prompt for g in test for _ in g.responses],
                                    [r for g in test for r in g.responses])
    test_responses = len(truncated)
    judges = {"split-test": zero_shot(warm, tokenizer, cache, test), "offprompt-test": zero_shot(warm, tokenizer, cache, off_test)}
    for domain in RMBENCH_DOMAINS:
        held = [g for g in train + test if domain_of(g) == domain]
        judges[f"lodo-{domain}"] = zero_shot(warm, tokenizer, cache, held)
    del warm

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    lodo_seeds = [int(s) for s in args.lodo_seeds.split(",") if s.strip()] if args.lodo_seeds else seeds
    legacy_seeds = [int(s) for s in args.legacy_seeds.split(",") if s.strip()]
    recipes = [r for r in args.recipes.split(",") if r]
    runs = []

    def run(recipe, seed, setting, train_groups, eval_sets):
        model, info = train_one(args, recipe, seed, train_groups, cache, tokenizer)
        result = {"recipe": recipe, "seed": seed, "setting": setting, **info, "eval": {}}
        for name, groups in eval_sets.items():
            metrics, gates = evaluate(model, tokenizer, cache, groups)
            result["eval"][name] = {"accuracy": metrics["accuracy"], "pairs": metrics["pairs"],
                                    "rm_bench": metrics.get("rm_bench"), "by_domain": metrics["by_domain"],
                                    "dimensions": metrics["dimensions"], "gate_means": gates}
        runs.append(result)
        summary = ", ".join(f"{n} {100 * v['accuracy']:.1f}" for n, v in result["eval"].items())
        print(f"[{setting}] {recipe} seed {seed}: {summary} ({info['train_seconds']} s)", file=sys.stderr, flush=True)
        del model

    for recipe in recipes:
        uses_offprompt = RECIPES[recipe][2]
        for seed in (legacy_seeds if recipe.endswith("-legacy") else seeds):
            train_groups = train + (off_train if uses_offprompt else [])
            run(recipe, seed, "split", train_groups, {"test": test, "offprompt": off_test})
            if args.no_lodo or (not recipe.endswith("-legacy") and seed not in lodo_seeds):
                continue
            for domain in RMBENCH_DOMAINS:
                fold_train = [g for g in train if domain_of(g) != domain]
                if uses_offprompt:
                    fold_train += [g for g in off_train if g.subset != domain]
                held = [g for g in train + test if domain_of(g) == domain]
                run(recipe, seed, f"lodo-{domain}", fold_train, {"heldout": held})

    report = build_report(args, argv, runs, judges, recipes, seeds, legacy_seeds, train, test, off_train, off_test,
                          dropped, features_seconds, started, sum(truncated), test_responses)
    report["budget"]["lodo_seeds"] = lodo_seeds
    os.makedirs(args.output_dir, exist_ok=True)

    def write():
        atomic_write_text(os.path.join(args.output_dir, "srm_quality.json"), json.dumps(report, indent=2) + "\n")
        atomic_write_text(os.path.join(args.output_dir, "srm_quality.md"), markdown(report))

    write()  # the model results land even if the (slow) judge probe below is interrupted
    if args.judge_pairs:
        report["judge_branch_probe"] = judge_probe(test, off_test, args.judge_pairs, cache)
        write()
    print(markdown(report))
    return 0


# ---------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------
def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _std(values):
    values = [v for v in values if v is not None]
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def recipe_table(runs, recipe) -> dict:
    """Per seed and mean: split RM-Bench avg, IFBench, all test pairs, off-prompt, each LODO fold, LODO avg."""
    per_seed = {}
    for r in runs:
        if r["recipe"] != recipe:
            continue
        row = per_seed.setdefault(r["seed"], {})
        if r["setting"] == "split":
            test = r["eval"]["test"]
            row["rm_bench_avg"] = (test.get("rm_bench") or {}).get("average")
            row["ifbench"] = test["by_domain"].get("level-1") and _mean(
                [test["by_domain"][d]["accuracy"] for d in test["by_domain"] if d.startswith("level-")])
            pairs = {d: v["pairs"] for d, v in test["by_domain"].items() if d.startswith("level-")}
            if pairs:
                row["ifbench"] = sum(test["by_domain"][d]["accuracy"] * n for d, n in pairs.items()) / sum(pairs.values())
            row["test_all"] = test["accuracy"]
            row["offprompt"] = r["eval"]["offprompt"]["accuracy"]
            row["offprompt_by_domain"] = {d.split("/", 1)[1]: v["accuracy"]
                                          for d, v in r["eval"]["offprompt"]["by_domain"].items()}
            row["gates_test"] = r["eval"]["test"]["gate_means"]
            row["gates_offprompt"] = r["eval"]["offprompt"]["gate_means"]
            row["relevance_dimension_offprompt"] = r["eval"]["offprompt"]["dimensions"].get("relevance", {}).get("accuracy")
        else:
            held = r["eval"]["heldout"]
            row[r["setting"]] = (held.get("rm_bench") or {}).get("average")
    for row in per_seed.values():
        folds = [row.get(f"lodo-{d}") for d in RMBENCH_DOMAINS]
        row["lodo_avg"] = _mean(folds) if all(f is not None for f in folds) else None
    keys = ["rm_bench_avg", "ifbench", "test_all", "offprompt", "lodo_avg"] + [f"lodo-{d}" for d in RMBENCH_DOMAINS]
    mean = {k: _mean([row.get(k) for row in per_seed.values()]) for k in keys}
    std = {k: _std([row.get(k) for row in per_seed.values()]) for k in keys}
    return {"per_seed": per_seed, "mean": mean, "std": std}


def _copy_speed(key):
    path = os.path.join(ROOT, "docs", "results", "srm_speed.json")
    try:
        with open(path, encoding="utf-8") as handle:
            summary = json.load(handle).get("summary", {})
        return summary.get(key)
    except (OSError, ValueError):
        return None


def _pct(value):
    return None if value is None else round(100 * value, 1)


def build_report(args, argv, runs, judges, recipes, seeds, legacy_seeds, train, test, off_train, off_test, dropped,
                 features_seconds, started, truncated, test_responses) -> dict:
    tables = {recipe: recipe_table(runs, recipe) for recipe in recipes}
    below = []
    for r in runs:
        for name, ev in r["eval"].items():
            for scope, values in [("all", {"accuracy": ev["accuracy"], "pairs": ev["pairs"]}), *ev["by_domain"].items()]:
                if binomial_below_chance(values["accuracy"], values["pairs"]):
                    below.append(f"{r['recipe']} seed {r['seed']} {r['setting']}/{name}/{scope}: "
                                 f"{100 * values['accuracy']:.1f}% of {values['pairs']}")

    def pick(recipe, key):
        return _pct(tables.get(recipe, {}).get("mean", {}).get(key))

    summary = {
        "leave_one_domain_out": {"srm": pick("srm", "lodo_avg"), "scalar": pick("scalar", "lodo_avg")},
        "off_prompt_negatives": {"srm": pick("srm", "offprompt"), "scalar": pick("scalar", "offprompt")},
        "rm_bench_avg": {"srm": pick("srm", "rm_bench_avg"), "scalar": pick("scalar", "rm_bench_avg")},
        "throughput_ratio": _copy_speed("throughput_ratio"),
        "judge_speedup": _copy_speed("judge_speedup"),
        "seeds": seeds,
    }
    return {
        "summary": summary,
        "command": " ".join(["python", "benchmarks/srm_quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "tables": tables,
        "zero_shot_judges": judges,
        "below_chance_flags": below,
        "truncation": {"test_responses": test_responses, "truncated": truncated, "window": args.max_length},
        "runs": runs,
        "data": {"train_groups": len(train), "test_groups": len(test), "dropped_overlap": dropped,
                 "offprompt_train_groups": len(off_train), "offprompt_test_groups": len(off_test),
                 "offprompt_test_pairs": sum(len(g.pairs) for g in off_test),
                 "neighbour_max_cosine": args.neighbour_max_cosine},
        "budget": {"backbone": args.backbone, "max_length": args.max_length, "max_prompt_length": args.max_prompt_length,
                   "epochs": args.epochs, "batch_size": args.batch_size, "head_lr": args.head_lr, "seeds": seeds,
                   "legacy_seeds": legacy_seeds, "frozen_backbone": True, "task_grouping": "single",
                   "limit": args.limit, "train_fraction": args.train_fraction},
        "timing": {"features_seconds": round(features_seconds, 1), "total_seconds": round(time.time() - started, 1)},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), "
                   f"torch {torch.__version__}, Python {platform.python_version()}",
    }


def _f(value):
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(report: dict) -> str:
    s, t, d, b = report["summary"], report["tables"], report["data"], report["budget"]
    lines = ["# SRM vs scalar reward model: held-out prompts and generalization proxies", "",
             "Pairwise accuracy in %, frozen `" + b["backbone"] + "` backbone for every model, mean over seeds "
             f"{', '.join(map(str, b['seeds']))} (LODO folds: seeds {', '.join(map(str, b.get('lodo_seeds', b['seeds'])))}; "
             f"the `-legacy` rows: seed(s) {', '.join(map(str, b['legacy_seeds']))}).",
             "", "## Summary", "",
             "| | SRM | scalar |", "|---|---|---|",
             f"| leave-one-domain-out average (RM-Bench avg on the held-out domain) | {s['leave_one_domain_out']['srm']} | "
             f"{s['leave_one_domain_out']['scalar']} |",
             f"| off-prompt negatives | {s['off_prompt_negatives']['srm']} | {s['off_prompt_negatives']['scalar']} |",
             f"| RM-Bench avg, split test prompts | {s['rm_bench_avg']['srm']} | {s['rm_bench_avg']['scalar']} |", "",
             f"throughput ratio (SRM / scalar scoring, from srm_speed.json): {s['throughput_ratio']}; "
             f"speed-up over a generative judge: {s['judge_speedup']}.", "",
             "## All recipes", "",
             "| recipe | RM-Bench avg (split) | IFBench (split) | all test pairs | off-prompt | LODO avg | "
             + " | ".join(f"LODO {x}" for x in RMBENCH_DOMAINS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(RMBENCH_DOMAINS)]
    for recipe, table in t.items():
        m, sd = table["mean"], table["std"]
        cells = [f"{_f(m[k])} ± {100 * sd[k]:.1f}" if m[k] is not None else "-"
                 for k in ["rm_bench_avg", "ifbench", "test_all", "offprompt", "lodo_avg"] + [f"lodo-{x}" for x in RMBENCH_DOMAINS]]
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    lines += ["", "(± is the spread over seeds, population standard deviation.)", "",
              "Zero-shot judges on the same sets (no training):", "",
              "| set | cosine(prompt, response) | prefer shorter |", "|---|---|---|"]
    for name, values in report["zero_shot_judges"].items():
        lines.append(f"| {name} | {_f(values['cosine'])} | {_f(values['shorter'])} |")
    lines += ["", "Off-prompt accuracy by domain of the prompt (seed means):", "",
              "| recipe | " + " | ".join(RMBENCH_DOMAINS + ("ifbench",)) + " |", "|---|" + "---|" * 5]
    for recipe, table in t.items():
        seeds = list(table["per_seed"].values())
        cells = [_f(_mean([row.get("offprompt_by_domain", {}).get(x) for row in seeds]))
                 for x in RMBENCH_DOMAINS + ("ifbench",)]
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    lines += ["", "Mean gate weights (first seed; split test prompts / off-prompt set) and the relevance dimension's own "
              "accuracy on off-prompt pairs:", "", "| recipe | gates on test | gates on off-prompt | relevance dim. |",
              "|---|---|---|---|"]
    for recipe, table in t.items():
        first = next(iter(table["per_seed"].values()), {})
        if not first.get("gates_test"):
            continue
        fmt = lambda g: ", ".join(f"{k} {v:.2f}" for k, v in g.items())  # noqa: E731
        lines.append(f"| {recipe} | {fmt(first['gates_test'])} | {fmt(first['gates_offprompt'])} | "
                     f"{_f(first.get('relevance_dimension_offprompt'))} |")
    judge = report.get("judge_branch_probe")
    if judge:
        lines += ["", f"Judge side branch (smollm2-135m, P(\"Yes\") to a fixed verification question, one forward "
                  f"pass, no training): {judge['seconds_per_response']} s per response on this CPU "
                  f"({judge['responses_computed']} responses computed); zero-shot accuracy: "
                  + ", ".join(f"{k} {_f(v['accuracy'])} ({v['pairs']} pairs)" for k, v in judge.items()
                              if isinstance(v, dict)) + "."]
    flags = report["below_chance_flags"]
    lines += ["", f"Sets significantly below chance (one-sided p < 0.05, normal approximation): "
              + ("none" if not flags else "; ".join(flags)), "",
              "## Budget and setup", "",
              f"- command: `{report['command']}`",
              f"- backbone `{b['backbone']}` frozen, pooled outputs cached; joint window {b['max_length']} tokens with "
              f"head+tail truncation ({report['truncation']['truncated']} of {report['truncation']['test_responses']} "
              f"split-test responses truncated), prompt pass {b['max_prompt_length']} tokens; {b['epochs']} epochs, "
              f"batch {b['batch_size']} response groups (task grouping single), head lr {b['head_lr']}, tuner full.",
              f"- data: {d['train_groups']} train / {d['test_groups']} test response groups of the canonical split "
              f"({d['dropped_overlap']} train groups whose prompt also occurs in the test split dropped); off-prompt "
              f"negatives: {d['offprompt_train_groups']} train groups (one pair each, used only by recipes marked "
              f"so) and {d['offprompt_test_groups']} test groups ({d['offprompt_test_pairs']} pairs); neighbours "
              f"with cosine > {d['neighbour_max_cosine']} skipped.",
              f"- LODO: train on the train prompts of three RM-Bench domains + IFBench (+ their off-prompt pairs), "
              f"test on all prompts of the fourth.",
              f"- feature/encoder caching {report['timing']['features_seconds']} s (near 0 with a warm cache); total "
              f"wall time {report['timing']['total_seconds']} s.",
              f"- machine: {report['machine']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
