"""`sft-core`: shared fine-tuning infrastructure from the command line."""

from __future__ import annotations

import argparse
import sys

from sft_core.cli_errors import UserError, run_cli


def _add_models_command(subcommands) -> None:
    parser = subcommands.add_parser(
        "models", help="list the offline model aliases, whether each is ready, its size and path",
        description="List the offline model aliases (minilm-l6, me5-small, smollm2-135m). "
                    "Converted models are built once into $SFTKIT_CACHE (default ~/.cache/sftkit).")
    parser.add_argument("--prepare", action="store_true",
                        help="convert every alias that is not ready yet, and rebuild any whose files fail the check")
    parser.add_argument("--verify", action="store_true",
                        help="also check the sha256 of every converted file against its completion marker "
                             "(the cheap size check always runs)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")

    def run(args):
        from sft_core.hub import models_command

        return models_command(args)

    parser.set_defaults(handler=run)


def _add_train_command(subcommands) -> None:
    from sft_core.train_command import add_train_arguments

    parser = subcommands.add_parser(
        "train", help="multi-task SFT of a causal LM with EPI, static isolation or full fine-tuning",
        description="Fine-tune a causal LM on TRL-format JSONL/JSON files ({'prompt','completion'} or {'messages'}), "
                    "or on any JSONL/JSON/TSV/CSV table through --text-field/--prompt-template and --label-field. "
                    "Loss on completions only, chat template applied. Writes a Hugging Face model directory plus "
                    "epi_state.{safetensors,json} and epi_drift.jsonl; progress and logs on stderr, a JSON summary "
                    "on stdout. Checkpoints end with a completion marker; see --resume.")
    add_train_arguments(parser)

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
        except ValueError as error:  # an unreadable drift log: the message names the file
            raise UserError(str(error)) from None
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
    from sft_core.ilp.commands import register as register_ilp_commands

    register_ilp_commands(subcommands)  # diagnose, mitigate
    return parser


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    return int(args.handler(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Every subcommand runs through run_cli: a user error is one ``error: ...`` line and exit code 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
