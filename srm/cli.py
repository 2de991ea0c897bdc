"""`srm train | score | evaluate | serve` (see docs/srm.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from sft_core.atomic_io import atomic_write_text

DATA_ROOT_ENV = "SFTKIT_DATA_ROOT"


def _load_scorer(args):
    from .scoring import SRMScorer

    if not os.path.isdir(args.model) or not os.path.exists(os.path.join(args.model, "config.json")):
        raise SystemExit(f"srm: error: --model {args.model!r} is not a saved SRM directory (no config.json); "
                         "train one with `srm train`")
    try:
        return SRMScorer.from_pretrained(args.model, batch_size=args.batch_size, show_progress=True)
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"srm: error: cannot load the SRM in {args.model!r}: {error}") from None


def _load_split(args):
    if not args.split:
        return None
    with open(args.split, encoding="utf-8") as handle:
        return json.load(handle)


def _resolve_data_paths(paths: list[str], data_root: str | None) -> list[str]:
    root = data_root or os.environ.get(DATA_ROOT_ENV)
    resolved = []
    for path in paths:
        if not os.path.exists(path) and root and os.path.exists(os.path.join(root, path)):
            path = os.path.join(root, path)
        resolved.append(path)
    return resolved


# ---------------------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .configuration_srm import DimensionSpec
    from .data import DataFormatError, load_groups, select_split
    from .modeling_srm import SRMModel
    from .trainer import train_srm

    dimensions = None
    if args.dimensions:
        dimensions = [DimensionSpec.from_any(spec.strip()) for spec in args.dimensions.split(",") if spec.strip()]
    branch_settings = {"similarity": {"model": args.similarity_model, "max_length": args.similarity_max_length},
                       "likelihood": {"model": args.likelihood_model, "max_length": args.max_length,
                                      "max_prompt_length": args.max_prompt_length},
                       "style": {}}
    model = SRMModel.from_backbone(args.backbone, dimensions=dimensions, scalar_baseline=args.scalar_baseline,
                                   branch_settings=branch_settings, max_sequence_length=args.max_length,
                                   max_prompt_length=args.max_prompt_length, freeze_backbone=args.freeze_backbone,
                                   gate_temperature=args.gate_temperature, margin_loss=args.margin_loss,
                                   center_rewards_coefficient=args.center_rewards_coefficient)
    from transformers import AutoTokenizer

    from sft_core.hub import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.backbone))
    try:
        groups, _ = load_groups(_resolve_data_paths(args.data, args.data_root), fmt=args.format,
                                dimension_names=model.config.dimension_names)
    except DataFormatError as error:
        print(f"srm train: error: {error}", file=sys.stderr)
        return 2
    split = _load_split(args)
    if split is not None:
        groups = select_split(groups, split, args.split_part)
    print(f"srm train: {len(groups)} response groups, dimensions={model.config.dimension_names or ['reward']}",
          file=sys.stderr)
    from .branches import FeatureCache

    resume = args.resume
    if resume == "latest":
        resume = True
    train_srm(model, tokenizer, groups, args.output, tuner=args.tuner, task_grouping=args.task_grouping,
              feature_cache=FeatureCache(args.feature_cache) if args.feature_cache else None,
              resume_from_checkpoint=resume, num_train_epochs=args.epochs, learning_rate=args.lr,
              head_learning_rate=args.head_lr, batch_size=args.batch_size, seed=args.seed, max_steps=args.max_steps)
    print(f"srm train: saved to {args.output}", file=sys.stderr)
    return 0


def _score_record(scorer, record, location, explain: bool) -> dict:
    from .data import parse_record

    if isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str) \
            and "ratings" not in record:
        return scorer.score([(record["prompt"], record["response"])])[0].to_dict()
    group = parse_record(record, location)
    results = scorer.score([(group.prompt, r) for r in group.responses])
    out = {"responses": [r.to_dict() for r in results], "comparisons": []}
    for pair in group.pairs:
        if not pair.overall:
            continue
        first, second = results[pair.better], results[pair.worse]
        comparison = {"labelled_better": pair.better, "labelled_worse": pair.worse}
        explanation = scorer.explain_pair(first, second)
        comparison["preferred"] = {"first": pair.better, "second": pair.worse}.get(explanation["preferred"], "tie")
        comparison["margin"] = explanation["margin"]
        comparison["correct"] = explanation["margin"] > 0
        if explain:
            comparison["contributions"] = explanation["contributions"]
            comparison["decided_by"] = explanation["decided_by"]
        out["comparisons"].append(comparison)
    return out


def cmd_score(args) -> int:
    from .data import DataFormatError, read_records

    scorer = _load_scorer(args)
    lines, errors = [], []
    try:
        records = list(read_records(args.input))
    except DataFormatError as error:
        if not args.input.endswith(".jsonl"):  # a broken JSON array cannot be read record by record
            print(f"srm score: error: {error}", file=sys.stderr)
            return 2
        records = None
    if records is None:  # a broken line in JSONL: read line by line so the good lines still get scored
        records = []
        with open(args.input, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        records.append((f"{args.input}:line {number}", json.loads(line)))
                    except json.JSONDecodeError as error:
                        records.append((f"{args.input}:line {number}", DataFormatError(f"invalid JSON ({error.msg})")))
    for index, (location, record) in enumerate(records):
        try:
            if isinstance(record, Exception):
                raise record
            result = _score_record(scorer, record, location, args.explain)
        except (DataFormatError, ValueError) as error:
            message = str(error) if str(error).startswith(location) else f"{location}: {error}"
            errors.append(message)
            result = {"error": message}
        lines.append(json.dumps({"index": index, **result}, ensure_ascii=False))
    text = "\n".join(lines) + ("\n" if lines else "")
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    print(f"srm score: {len(records) - len(errors)} scored, {len(errors)} failed", file=sys.stderr)
    for message in errors:
        print(f"  {message}", file=sys.stderr)
    return 1 if errors else 0


def cmd_evaluate(args) -> int:
    from .data import DataFormatError, load_groups, select_split
    from .evaluation import evaluate_groups

    scorer = _load_scorer(args)
    try:
        groups, errors = load_groups(_resolve_data_paths(args.data, args.data_root), fmt=args.format, on_error="skip")
    except DataFormatError as error:
        print(f"srm evaluate: error: {error}", file=sys.stderr)
        return 2
    split = _load_split(args)
    if split is not None:
        groups = select_split(groups, split, args.split_part)
    if not groups:
        print("srm evaluate: error: no usable records", file=sys.stderr)
        for message in errors:
            print(f"  {message}", file=sys.stderr)
        return 2
    metrics = evaluate_groups(scorer, groups)
    metrics["skipped_records"] = errors
    text = json.dumps(metrics, indent=2) + "\n"
    if args.output:
        atomic_write_text(args.output, text)
    sys.stdout.write(text)
    if errors:
        print(f"srm evaluate: {len(errors)} bad records skipped:", file=sys.stderr)
        for message in errors:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args) -> int:
    from .serve import run_server

    run_server(_load_scorer(args), host=args.host, port=args.port, max_batch_size=args.max_batch_size,
               max_request_bytes=args.max_request_bytes)
    return 0


# ---------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srm", description="Structural Reward Model: train, score, evaluate, serve")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train an SRM (or the scalar baseline) on preference data")
    train.add_argument("--backbone", default="minilm-l6", help="encoder alias, hub id or local path")
    train.add_argument("--dimensions", default=None,
                       help="comma-separated name[:branch[:label_type]] (branch: head|style|similarity|likelihood); "
                            "default: correctness,instruction_following,safety (head), style, relevance (similarity), "
                            "fluency (likelihood)")
    train.add_argument("--scalar-baseline", action="store_true", help="one head, no gate, no side branches")
    train.add_argument("--data", nargs="+", required=True, help="data files (.json array or .jsonl)")
    train.add_argument("--data-root", default=None, help=f"prefix for relative --data paths (env {DATA_ROOT_ENV})")
    train.add_argument("--format", default="auto", help="auto|trl|rm-bench|chat-pair|pairwise|ratings")
    train.add_argument("--split", default=None, help="prompt-level split JSON (splits/preference-split.json)")
    train.add_argument("--split-part", default="train")
    train.add_argument("--tuner", default="full", choices=["full", "static", "epi"])
    train.add_argument("--task-grouping", default="objective", choices=["objective", "single"])
    train.add_argument("--output", required=True, help="output model directory")
    train.add_argument("--resume", default=None, help="checkpoint directory, or 'latest'")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--max-steps", type=int, default=-1)
    train.add_argument("--lr", type=float, default=3e-5, help="encoder learning rate")
    train.add_argument("--head-lr", type=float, default=1e-3, help="heads, gate and scorers learning rate")
    train.add_argument("--batch-size", type=int, default=8, help="response groups per step")
    train.add_argument("--max-length", type=int, default=256)
    train.add_argument("--max-prompt-length", type=int, default=128)
    train.add_argument("--freeze-backbone", action="store_true", help="train only heads/gate/scorers (cached encoder)")
    train.add_argument("--gate-temperature", type=float, default=1.0)
    train.add_argument("--margin-loss", action="store_true")
    train.add_argument("--center-rewards-coefficient", type=float, default=None)
    train.add_argument("--similarity-model", default="minilm-l6")
    train.add_argument("--similarity-max-length", type=int, default=128)
    train.add_argument("--likelihood-model", default="smollm2-135m")
    train.add_argument("--feature-cache", default=None, help="safetensors file caching frozen branch outputs")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=cmd_train)

    score = sub.add_parser("score", help="score JSONL records: {prompt, response} or any pair format")
    score.add_argument("--model", required=True)
    score.add_argument("--input", required=True)
    score.add_argument("--output", default=None, help="JSONL output (default: stdout)")
    score.add_argument("--explain", action="store_true", help="per-dimension contributions for pairs")
    score.add_argument("--batch-size", type=int, default=16)
    score.set_defaults(func=cmd_score)

    evaluate = sub.add_parser("evaluate", help="pairwise accuracy (overall, per domain, per dimension, RM-Bench)")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--data", nargs="+", required=True)
    evaluate.add_argument("--data-root", default=None)
    evaluate.add_argument("--format", default="auto")
    evaluate.add_argument("--split", default=None)
    evaluate.add_argument("--split-part", default="test")
    evaluate.add_argument("--output", default=None, help="also write the JSON here")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.set_defaults(func=cmd_evaluate)

    serve = sub.add_parser("serve", help="HTTP endpoint: POST /score, POST /get_reward (OpenRLHF)")
    serve.add_argument("--model", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--batch-size", type=int, default=16)
    serve.add_argument("--max-batch-size", type=int, default=64)
    serve.add_argument("--max-request-bytes", type=int, default=2_000_000)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
