"""`srm train | score | evaluate | serve` (see docs/srm.md).

Every command prints its result as JSON on stdout (JSON Lines for ``score``) and everything else (progress
bars, trainer logs, summaries) on stderr. User errors (a missing file, an empty input, a bad flag, a backbone
that is not a model, ``--resume latest`` with no checkpoint) give one ``error: ...`` line and exit code 2
(:func:`sft_core.cli_errors.run_cli`); records that cannot be read are reported one by one, the rest is
processed, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from sft_core.atomic_io import atomic_write_text
from sft_core.cli_errors import UserError, run_cli

DATA_ROOT_ENV = "SFTKIT_DATA_ROOT"
DEFAULT_DATA_ROOT = os.path.join("..", "shared", "datasets")


# ---------------------------------------------------------------------------------------------------------
# loading models and data
# ---------------------------------------------------------------------------------------------------------
def _load_scorer(args):
    from .scoring import SRMScorer, load_scorer

    if args.model is None:
        try:
            return load_scorer(None, batch_size=args.batch_size, show_progress=True)
        except FileNotFoundError as error:
            raise UserError(f"no --model given and {error}") from None
    if not os.path.isdir(args.model) or not os.path.exists(os.path.join(args.model, "config.json")):
        raise UserError(f"--model {args.model}: not a saved SRM directory (no config.json); "
                        "train one with `srm train`, or leave --model out to use the default SRM")
    try:
        return SRMScorer.from_pretrained(args.model, batch_size=args.batch_size, show_progress=True)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"--model {args.model}: cannot load the SRM ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _data_root(args) -> str | None:
    root = args.data_root or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT
    return root if os.path.isdir(root) else None


def _resolve_data_paths(paths: list[str], data_root: str | None) -> list[str]:
    """A relative ``--data`` path that does not exist as given is looked up under the data root."""
    resolved = []
    for path in paths:
        if not os.path.exists(path) and data_root and os.path.exists(os.path.join(data_root, path)):
            path = os.path.join(data_root, path)
        resolved.append(path)
    return resolved


def _load_split(args):
    if not args.split:
        return None
    try:
        with open(args.split, encoding="utf-8") as handle:
            split = json.load(handle)
    except OSError as error:
        raise UserError(f"--split {args.split}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise UserError(f"--split {args.split}: malformed JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(split, dict):
        raise UserError(f"--split {args.split}: expected a JSON object of split tables")
    return split


def _load_groups(args, on_error: str, dimension_names=None):
    from .data import load_groups, select_split

    data_root = _data_root(args)
    groups, errors = load_groups(_resolve_data_paths(args.data, data_root), fmt=args.format, on_error=on_error,
                                 dimension_names=dimension_names, data_root=data_root)
    split = _load_split(args)
    if split is not None:
        groups = select_split(groups, split, args.split_part)
        if not groups:
            raise UserError(f"--split {args.split} --split-part {args.split_part}: no record of --data is in it")
    return groups, errors


# ---------------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------------
def _dimension_specs(text: str | None):
    from .configuration_srm import DimensionSpec

    if not text:
        return None
    try:
        return [DimensionSpec.from_any(spec.strip()) for spec in text.split(",") if spec.strip()]
    except (ValueError, TypeError) as error:
        raise UserError(f"--dimensions {text}: {error}") from None


def _build_model(args):
    from .modeling_srm import SRMModel

    branch_settings = {"similarity": {"model": args.similarity_model, "max_length": args.similarity_max_length},
                       "likelihood": {"model": args.likelihood_model, "max_length": args.max_length,
                                      "max_prompt_length": args.max_prompt_length},
                       "style": {}}
    try:
        return SRMModel.from_backbone(
            args.backbone, dimensions=_dimension_specs(args.dimensions), scalar_baseline=args.scalar_baseline,
            branch_settings=branch_settings, max_sequence_length=args.max_length,
            max_prompt_length=args.max_prompt_length, freeze_backbone=args.freeze_backbone,
            gate_temperature=args.gate_temperature, margin_loss=args.margin_loss,
            center_rewards_coefficient=args.center_rewards_coefficient)
    except (OSError, ValueError) as error:
        # from_pretrained on something that is not a model: a data file, an empty folder, an unreachable hub id.
        raise UserError(f"--backbone {args.backbone}: not a loadable model ({_first_line(error)})") from None


def cmd_train(args) -> dict:
    from transformers import AutoTokenizer, set_seed

    from sft_core.checkpoints import resolve_resume
    from sft_core.hub import resolve_model

    from .branches import FeatureCache
    from .trainer import checkpoint_dir, train_srm

    # Everything cheap that can fail on user input comes first, before models are loaded or features computed.
    resume_from = resolve_resume(checkpoint_dir(args.output), args.resume)
    # Seed before the model is built: the gate, heads and scorers are initialised randomly in __init__.
    set_seed(args.seed)
    model = _build_model(args)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.backbone))
    groups, _ = _load_groups(args, on_error="raise", dimension_names=model.config.dimension_names)
    print(f"srm train: {len(groups)} response groups, dimensions={model.config.dimension_names or ['reward']}",
          file=sys.stderr)
    try:
        trainer = train_srm(model, tokenizer, groups, args.output, tuner=args.tuner, task_grouping=args.task_grouping,
                            feature_cache=FeatureCache(args.feature_cache) if args.feature_cache else None,
                            resume_from_checkpoint=resume_from, num_train_epochs=args.epochs, learning_rate=args.lr,
                            head_learning_rate=args.head_lr, batch_size=args.batch_size, seed=args.seed,
                            max_steps=args.max_steps, weight_decay=args.weight_decay)
    except ValueError as error:  # e.g. the data has no label this dimension set can learn from
        raise UserError(f"--data {' '.join(args.data)}: {error}") from None
    print(f"srm train: saved to {args.output}", file=sys.stderr)
    history = [entry for entry in trainer.state.log_history if "train_loss" in entry]
    return {"output": args.output, "response_groups": len(groups), "training_items": len(trainer.train_dataset),
            "tuner": args.tuner, "seed": args.seed, "global_step": trainer.state.global_step,
            "train_loss": history[-1]["train_loss"] if history else None, "resumed_from": resume_from}


# ---------------------------------------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------------------------------------
def _score_record(scorer, record, location, explain: bool) -> dict:
    from .data import parse_record
    from .evaluation import is_correct

    if isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str) \
            and "ratings" not in record:
        return scorer.score([(record["prompt"], record["response"])])[0].to_dict()
    group = parse_record(record, location)
    results = scorer.score([(group.prompt, r) for r in group.responses])
    out = {"responses": [r.to_dict() for r in results], "comparisons": []}
    for pair in group.pairs:
        if not pair.overall:
            continue
        explanation = scorer.explain_pair(results[pair.better], results[pair.worse])
        comparison = {"labelled_better": pair.better, "labelled_worse": pair.worse,
                      "preferred": {"first": pair.better, "second": pair.worse}.get(explanation["preferred"], "tie"),
                      "margin": explanation["margin"],
                      "correct": is_correct(explanation["margin"])}
        if explain:
            comparison["contributions"] = explanation["contributions"]
            comparison["decided_by"] = explanation["decided_by"]
        out["comparisons"].append(comparison)
    return out


def cmd_score(args):
    from sft_core.records import RecordError, read_records

    # Read (and reject a missing or empty input) before the model is loaded: a usage error should be instant.
    report = read_records(args.input, on_error="skip")
    entries = sorted([(record.line, record) for record in report.records]
                     + [(error.line or 0, error) for error in report.errors], key=lambda entry: entry[0])
    scorer = _load_scorer(args)
    lines, errors = [], []
    for index, (_, entry) in enumerate(entries):
        try:
            if isinstance(entry, RecordError):
                raise entry
            result = _score_record(scorer, entry.data, entry.where, args.explain)
        except RecordError as error:
            errors.append(str(error))
            result = {"error": str(error)}
        lines.append(json.dumps({"index": index, **result}, ensure_ascii=False))
    text = "\n".join(lines) + "\n"
    if args.output:
        atomic_write_text(args.output, text)
    print(f"srm score: {len(entries) - len(errors)} scored, {len(errors)} failed", file=sys.stderr)
    for message in errors:
        print(f"  {message}", file=sys.stderr)
    return (1 if errors else 0), (None if args.output else text)


# ---------------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------------
def cmd_evaluate(args):
    from .evaluation import evaluate_groups

    groups, errors = _load_groups(args, on_error="skip")
    if not groups:
        raise UserError(f"--data {' '.join(args.data)}: no usable records ({len(errors)} bad records)")
    scorer = _load_scorer(args)
    metrics = evaluate_groups(scorer, groups)
    metrics["skipped_records"] = errors
    text = json.dumps(metrics, indent=2) + "\n"
    if args.output:
        atomic_write_text(args.output, text)
    if errors:
        print(f"srm evaluate: {len(errors)} bad record{'s' if len(errors) != 1 else ''} skipped:", file=sys.stderr)
        for message in errors:
            print(f"  {message}", file=sys.stderr)
    return (1 if errors else 0), text


def cmd_serve(args) -> int:
    from .serve import run_server

    run_server(_load_scorer(args), host=args.host, port=args.port, max_batch_size=args.max_batch_size,
               max_request_bytes=args.max_request_bytes)
    return 0


# ---------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from sft_core.checkpoints import add_resume_argument
    from sft_core.trainer import TUNERS

    parser = argparse.ArgumentParser(prog="srm", description="Structural Reward Model: train, score, evaluate, serve")
    sub = parser.add_subparsers(dest="command", required=True)
    data_root_help = (f"folder that relative --data paths are looked up in and that source names are relative to "
                      f"(default: ${DATA_ROOT_ENV}, else {DEFAULT_DATA_ROOT})")
    model_help = "saved SRM directory (default: the SRM shipped with the package)"

    train = sub.add_parser("train", help="train an SRM (or the scalar baseline) on preference data")
    train.add_argument("--backbone", default="minilm-l6", help="encoder alias, hub id or local path")
    train.add_argument("--dimensions", default=None,
                       help="comma-separated name[:branch[:label_type]] (branch: head or a feature branch kind, "
                            "e.g. style, similarity, likelihood); default: correctness, instruction_following, "
                            "safety (head), style, relevance (similarity), fluency (likelihood)")
    train.add_argument("--scalar-baseline", action="store_true", help="one head, no gate, no side branches")
    train.add_argument("--data", nargs="+", required=True, help="data files (.json array or .jsonl)")
    train.add_argument("--data-root", default=None, help=data_root_help)
    train.add_argument("--format", default="auto", help="auto|trl|rm-bench|chat-pair|pairwise|ratings")
    train.add_argument("--split", default=None, help="prompt-level split JSON (splits/preference-split.json)")
    train.add_argument("--split-part", default="train")
    train.add_argument("--tuner", default="full", choices=list(TUNERS),
                       help="how objectives share parameters (sft_core MultiTaskTrainingArguments.tuner)")
    train.add_argument("--task-grouping", default="objective", choices=["objective", "single"])
    train.add_argument("--output", required=True, help="output model directory (checkpoints in OUTPUT/checkpoints)")
    add_resume_argument(train)
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--max-steps", type=int, default=-1)
    train.add_argument("--lr", type=float, default=3e-5, help="encoder learning rate")
    train.add_argument("--head-lr", type=float, default=1e-3, help="heads, gate and scorers learning rate")
    train.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (never on biases/norms)")
    train.add_argument("--batch-size", type=int, default=8, help="response groups per step")
    train.add_argument("--max-length", type=int, default=512,
                       help="token window of the joint prompt+response pass (head+tail truncation)")
    train.add_argument("--max-prompt-length", type=int, default=128)
    train.add_argument("--freeze-backbone", action="store_true", help="train only heads/gate/scorers (cached encoder)")
    train.add_argument("--gate-temperature", type=float, default=1.0)
    train.add_argument("--margin-loss", action="store_true")
    train.add_argument("--center-rewards-coefficient", type=float, default=None)
    train.add_argument("--similarity-model", default="minilm-l6")
    train.add_argument("--similarity-max-length", type=int, default=128)
    train.add_argument("--likelihood-model", default="smollm2-135m")
    train.add_argument("--feature-cache", default=None, help="safetensors file caching frozen branch outputs")
    train.add_argument("--seed", type=int, default=0, help="seeds initialisation, data order and dropout")
    train.set_defaults(func=cmd_train)

    score = sub.add_parser("score", help="score JSONL records: {prompt, response} or any pair format")
    score.add_argument("--model", default=None, help=model_help)
    score.add_argument("--input", required=True)
    score.add_argument("--output", default=None, help="JSONL output (default: stdout)")
    score.add_argument("--explain", action="store_true", help="per-dimension contributions for pairs")
    score.add_argument("--batch-size", type=int, default=16)
    score.set_defaults(func=cmd_score)

    evaluate = sub.add_parser("evaluate", help="pairwise accuracy (overall, per source/domain, per dimension, RM-Bench)")
    evaluate.add_argument("--model", default=None, help=model_help)
    evaluate.add_argument("--data", nargs="+", required=True)
    evaluate.add_argument("--data-root", default=None, help=data_root_help)
    evaluate.add_argument("--format", default="auto")
    evaluate.add_argument("--split", default=None)
    evaluate.add_argument("--split-part", default="test")
    evaluate.add_argument("--output", default=None, help="also write the JSON here")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.set_defaults(func=cmd_evaluate)

    serve = sub.add_parser("serve", help="HTTP endpoint: POST /score, POST /get_reward (OpenRLHF)")
    serve.add_argument("--model", default=None, help=model_help)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--batch-size", type=int, default=16)
    serve.add_argument("--max-batch-size", type=int, default=64)
    serve.add_argument("--max-request-bytes", type=int, default=2_000_000)
    serve.set_defaults(func=cmd_serve)
    return parser


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stdout = sys.stdout
    # Libraries (transformers' trainer log lines, model loading) print to stdout; stdout is for our JSON only.
    with contextlib.redirect_stdout(sys.stderr):
        result = args.func(args)
    if isinstance(result, tuple):  # (exit code, text for stdout)
        code, payload = result
    elif isinstance(result, int):
        code, payload = result, None
    else:
        code, payload = 0, result
    if isinstance(payload, dict):
        payload = json.dumps(payload, indent=2) + "\n"
    if payload:
        stdout.write(payload)
        stdout.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
