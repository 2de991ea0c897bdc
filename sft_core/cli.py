"""`sft-core`: shared fine-tuning infrastructure from the command line."""

from __future__ import annotations

import argparse
import sys


def _add_models_command(subcommands) -> None:
    parser = subcommands.add_parser(
        "models", help="list the offline model aliases, whether each is ready, its size and path",
        description="List the offline model aliases (minilm-l6, me5-small, smollm2-135m). "
                    "Converted models are built once into $SFTKIT_CACHE (default ~/.cache/sftkit).")
    parser.add_argument("--prepare", action="store_true", help="convert every alias that is not ready yet")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")

    def run(args):
        from sft_core.hub import models_command

        return models_command(args)

    parser.set_defaults(handler=run)


def _add_train_command(subcommands) -> None:
    from sft_core.epi.config import GRANULARITIES, METHODS, OVERLAP_RULES, SALIENCIES
    from sft_core.tasks import SCHEDULES

    parser = subcommands.add_parser(
        "train", help="multi-task SFT of a causal LM with EPI, static isolation or full fine-tuning",
        description="Fine-tune a causal LM on TRL-format JSONL files ({'prompt','completion'} or {'messages'}; "
                    "task from a 'task' field or the file name). Loss on completions only, chat template applied. "
                    "Writes a Hugging Face model directory plus epi_state.{safetensors,json} and epi_drift.jsonl.")
    parser.add_argument("--model", required=True, help="alias (smollm2-135m), local HF directory or hub id")
    parser.add_argument("--data", action="append", required=True, metavar="FILE.jsonl", help="repeatable")
    parser.add_argument("--output", required=True, help="run directory (checkpoints, final model, EPI state)")
    parser.add_argument("--method", choices=METHODS, default="epi")
    parser.add_argument("--schedule", choices=SCHEDULES, default="mixed")
    parser.add_argument("--task-proportions", default=None, metavar="TASK=W,...", help="e.g. sst2=2,gsm8k=1")
    parser.add_argument("--max-steps", type=int, default=-1, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-steps", type=int, default=200)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    epi = parser.add_argument_group("isolation (EPIConfig)")
    epi.add_argument("--isolation-ratio", type=float, default=0.1)
    epi.add_argument("--update-interval", type=int, default=50)
    epi.add_argument("--warmup-steps", type=int, default=50)
    epi.add_argument("--release-patience", type=int, default=2)
    epi.add_argument("--saliency", choices=SALIENCIES, default="fisher")
    epi.add_argument("--ema-decay", type=float, default=0.9)
    epi.add_argument("--granularity", choices=GRANULARITIES, default="element")
    epi.add_argument("--probe-steps", type=int, default=50)
    epi.add_argument("--overlap", choices=OVERLAP_RULES, default="share")

    def run(args):
        from sft_core.train_command import train_command

        return train_command(args)

    parser.set_defaults(handler=run)


def _add_drift_plot_command(subcommands) -> None:
    parser = subcommands.add_parser("drift-plot", help="render a run's epi_drift.jsonl as PNG curves",
                                    description="Plot Jaccard overlap, protected / newly protected / released "
                                                "counts per task over training steps.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `sft-core train` output directory (or the JSONL file)")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/epi_drift.png)")

    def run(args):
        from sft_core.epi.drift import plot_drift

        try:
            path = plot_drift(args.run_dir, args.out)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(path)
        return 0

    parser.set_defaults(handler=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sft-core",
        description="sftkit's shared supervised fine-tuning infrastructure: offline models, "
                    "multi-task training with Evolving Parameter Isolation (EPI), drift analytics.")
    subcommands = parser.add_subparsers(title="subcommands", metavar="COMMAND")
    _add_models_command(subcommands)
    _add_train_command(subcommands)
    _add_drift_plot_command(subcommands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
