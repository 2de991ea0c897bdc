"""`sft-core diagnose` and `sft-core mitigate` (registered by :func:`register`)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from .config import AttributionConfig, DetectionConfig


def _add_diagnose(subcommands) -> None:
    parser = subcommands.add_parser(
        "diagnose", help="find training samples a fine-tuned model did not learn and attribute a cause to each",
        description="Incomplete-learning (ILP) diagnosis: regenerate every training sample with the tuned model "
                    "(greedy + N sampled answers, checked against the target), compute training-dynamics, "
                    "base-model, data-consistency, order and rarity signals, and attribute each unlearned "
                    "sample to a cause. Writes REPORT_DIR/report.{json,csv,html}.")
    parser.add_argument("--model", action="append", required=True, metavar="TUNED",
                        help="tuned model directory (repeat for several seeds: pass rates are averaged)")
    parser.add_argument("--base", required=True, help="base model: alias (smollm2-135m), directory or hub id")
    parser.add_argument("--data", action="append", required=True, metavar="TRAIN.jsonl",
                        help="training data (TRL formats, as for `sft-core train`); repeatable")
    parser.add_argument("--run", action="append", default=[], metavar="RUN_DIR",
                        help="run directory with ilp_dynamics.{npz,json} (train with --record-dynamics); "
                             "repeat for sequential stages, in order")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR")
    parser.add_argument("--checker", choices=("exact", "number", "label"), default="exact",
                        help="how an answer is compared with the target (default: normalised exact match)")
    parser.add_argument("--num-samples", type=int, default=DetectionConfig.num_samples,
                        help="sampled generations per sample besides the greedy one")
    parser.add_argument("--temperature", type=float, default=DetectionConfig.temperature)
    parser.add_argument("--pass-threshold", type=float, default=DetectionConfig.pass_threshold,
                        help="unlearned = fraction of passing attempts below this")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0: target length + 8")
    parser.add_argument("--embedder", default="minilm-l6", help="encoder for near-duplicates/density; 'none' skips")
    parser.add_argument("--config", default=None, metavar="RULES.json", help="AttributionConfig fields to override")
    parser.add_argument("--before", default=None, metavar="OLD_REPORT_DIR", help="compare per cause with this report")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=diagnose_command)


def _add_mitigate(subcommands) -> None:
    from .mitigation import MitigationConfig

    parser = subcommands.add_parser(
        "mitigate", help="write a new training plan from a diagnosis report",
        description="Targeted mitigations per cause: resample rare/under-optimised samples, group conflicting "
                    "duplicates for review (kept apart in batches, or minority target dropped), replay "
                    "earlier-stage data against left-side forgetting, flag knowledge gaps and conflicts with "
                    "their evidence, add user-supplied prerequisite data. Writes PLAN_DIR/plan.json, stage "
                    "JSONL files, review_conflicts.jsonl and knowledge_flags.jsonl.")
    parser.add_argument("--report", required=True, metavar="REPORT_DIR")
    parser.add_argument("--data", action="append", required=True, metavar="TRAIN.jsonl",
                        help="the training data the report was made on")
    parser.add_argument("--out", required=True, metavar="PLAN_DIR")
    parser.add_argument("--upsample", type=int, default=MitigationConfig.upsample)
    parser.add_argument("--replay-fraction", type=float, default=MitigationConfig.replay_fraction)
    parser.add_argument("--drop-minority", action="store_true",
                        help="keep only the majority target of each conflicting duplicate group")
    parser.add_argument("--conflict-policy", choices=("upweight", "keep", "drop"),
                        default=MitigationConfig.conflict_policy,
                        help="what to do with samples whose target conflicts with the base model's knowledge")
    parser.add_argument("--no-separate", action="store_true",
                        help="do not give conflicting variants distinct task names")
    parser.add_argument("--prerequisites", action="append", default=[], metavar="FILE.jsonl",
                        help="user-supplied prerequisite knowledge for the knowledge gaps (SFT JSONL)")
    parser.add_argument("--base", default=None, help="model named in the suggested training commands")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=mitigate_command)


def register(subcommands) -> None:
    """Add ``diagnose`` and ``mitigate`` to an argparse subparsers object."""
    _add_diagnose(subcommands)
    _add_mitigate(subcommands)


def _fail(message: str) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def diagnose_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sft_core.hub import ModelNotAvailableError
    from sft_core.sft_data import SFTDataError

    from .diagnose import diagnose, load_report
    from .dynamics import DYNAMICS_ARRAYS

    if args.num_samples < 0:
        return _fail(f"--num-samples must be >= 0, got {args.num_samples}")
    if not 0.0 < args.pass_threshold <= 1.0:
        return _fail(f"--pass-threshold must be in (0, 1], got {args.pass_threshold}")
    for run_dir in args.run:
        if not (Path(run_dir) / DYNAMICS_ARRAYS).is_file():
            return _fail(f"--run {run_dir}: no {DYNAMICS_ARRAYS} (train with --record-dynamics N)")
    try:
        attribution = AttributionConfig.from_json(args.config) if args.config else AttributionConfig()
        before = load_report(args.before) if args.before else None
    except (OSError, ValueError, TypeError) as error:
        return _fail(f"{error}")
    detection = DetectionConfig(checker=args.checker, num_samples=args.num_samples, temperature=args.temperature,
                                pass_threshold=args.pass_threshold, max_new_tokens=args.max_new_tokens, seed=args.seed)
    try:
        report = diagnose(args.model, args.base, args.data, out_dir=args.out, run_dirs=args.run, detection=detection,
                          attribution=attribution, embedder=None if args.embedder == "none" else args.embedder,
                          batch_size=args.batch_size, max_length=args.max_length, before=before,
                          progress=not args.no_progress)
    except (SFTDataError, ModelNotAvailableError, ValueError) as error:
        return _fail(error)
    print(json.dumps({"out": args.out, **report["summary"],
                      **({"comparison": report["comparison"]["total"]} if "comparison" in report else {})}))
    return 0


def mitigate_command(args: argparse.Namespace) -> int:
    from sft_core.sft_data import SFTDataError

    from .mitigation import MitigationConfig, build_plan

    try:
        config = MitigationConfig(upsample=args.upsample, replay_fraction=args.replay_fraction,
                                  drop_minority=args.drop_minority, conflict_policy=args.conflict_policy,
                                  separate_conflicting=not args.no_separate, seed=args.seed)
        plan = build_plan(args.report, args.data, args.out, config, prerequisites=args.prerequisites,
                          base_model=args.base)
    except (SFTDataError, OSError, ValueError, KeyError) as error:
        return _fail(error)
    print(json.dumps({"out": args.out, "stages": plan["stages"], "actions": plan["actions"]}))
    return 0


def attribution_fields() -> list[str]:
    return [f.name for f in fields(AttributionConfig)]
