"""``xformparser`` command line: train | evaluate | convert."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from sft_core.checkpoints import add_resume_argument
from sft_core.cli_errors import UserError, run_cli
from sft_core.trainer import TUNERS

from .formats import FORMATS, WRITERS, DataFormatError, check_page_images, load_documents

DEFAULT_DATA_ROOT = os.environ.get("SFTKIT_DATA_ROOT", "../shared/datasets")


def _resolve_data_path(path: str | None, data_root: str) -> str | None:
    """Paths that do not exist as given are looked up under --data-root (e.g. ``funsd/testing_data``)."""
    if path is None or Path(path).exists():
        return path
    candidate = Path(data_root) / path
    return str(candidate) if candidate.exists() else path


def _labels(text: str | None):
    return tuple(label.strip() for label in text.split(",") if label.strip()) if text else None


def _add_train_parser(subparsers) -> None:
    from .training import TrainingOptions  # defaults = the measured recipe

    parser = subparsers.add_parser("train", help="train a parser (SER + RE) on FUNSD/XFUND/InDFormSFT/PaddleOCR-KIE data",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--train", required=True, help="training data (file or folder)")
    parser.add_argument("--eval", help="evaluation data; the best checkpoint is chosen by its F1")
    parser.add_argument("--output", required=True, help="model directory to write (self-contained)")
    parser.add_argument("--backbone", default="minilm-l6", help="offline alias, local HF dir or hub id")
    parser.add_argument("--format", default="auto", choices=("auto",) + FORMATS)
    parser.add_argument("--tuner", default="full", choices=TUNERS,
                        help="sft_core parameter isolation (MultiTaskTrainingArguments.tuner)")
    parser.add_argument("--epi-tasks", default="auto", choices=("auto", "languages", "objectives"),
                        help="EPI tasks: languages of a multilingual set, or the SER and RE objectives; "
                             "auto = languages if the training set has several, else objectives")
    parser.add_argument("--image-branch", action="store_true", help="add the page-image CNN branch")
    parser.add_argument("--no-bilstm", action="store_true")
    parser.add_argument("--no-label-embedding", action="store_true")
    parser.add_argument("--no-geometric-features", action="store_true")
    parser.add_argument("--no-ser-context", action="store_true",
                        help="label each entity from its own tokens and box (no neighbour context before the SER head)")
    parser.add_argument("--token-context", action="store_true", help="token Bi-LSTM feeding the BIO tagging head")
    parser.add_argument("--context-kind", choices=("attention", "bilstm"), default="attention",
                        help="entity context: neighbour attention, or a Bi-LSTM over entities in reading order")
    parser.add_argument("--bio-loss-weight", type=float, help="weight of the token BIO loss (default: the model config's, 0.5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when torch sees one")
    parser.add_argument("--epochs", type=float, default=TrainingOptions.epochs)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=TrainingOptions.learning_rate, help="encoder learning rate")
    parser.add_argument("--head-lr", type=float, default=TrainingOptions.head_learning_rate,
                        help="learning rate of the image branch and SER/RE heads")
    parser.add_argument("--layout-lr", type=float, default=None,
                        help="layout-embedding learning rate (default: the encoder's when they enter at the encoder "
                             "input, frozen_layers=0; else the heads')")
    parser.add_argument("--frozen-layers", type=int, default=0,
                        help="freeze the encoder's embeddings and bottom N layers (their outputs are cached): "
                             "much faster on CPU; 0 fine-tunes the whole encoder")
    parser.add_argument("--window-size", type=int, default=512)
    parser.add_argument("--window-overlap", type=int, default=128)
    parser.add_argument("--key-labels", help="comma-separated link-head labels (default: question/key)")
    parser.add_argument("--value-labels", help="comma-separated link-tail labels (default: answer/value)")
    parser.add_argument("--seed", type=int, default=42)
    add_resume_argument(parser)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--data-root", default=DEFAULT_DATA_ROOT)


def _add_evaluate_parser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="SER / seqeval / RE report (JSON) of a model on labelled data")
    parser.add_argument("--model", help="model directory written by 'xformparser train' (or a backbone-delta "
                        "directory); default: the shipped default model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", default="auto", choices=("auto",) + FORMATS)
    parser.add_argument("--output", help="also write the JSON report here (atomically)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rule-above-cost", default="left_edge", choices=("left_edge", "box"))
    parser.add_argument("--data-root", default=DEFAULT_DATA_ROOT)


def _add_convert_parser(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert between FUNSD, XFUND, InDFormSFT and PaddleOCR-KIE files")
    parser.add_argument("--input", required=True)
    parser.add_argument("--input-format", default="auto", choices=("auto",) + FORMATS)
    parser.add_argument("--output", required=True, help="folder (funsd) or file (the others)")
    parser.add_argument("--output-format", required=True, choices=FORMATS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xformparser", description="Layout-aware form parser: entity labels (SER) "
                                     "and key -> value links (RE).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,convert,synth,parse}")
    _add_train_parser(subparsers)
    _add_evaluate_parser(subparsers)
    _add_convert_parser(subparsers)
    from .synth_command import register as register_synth  # synthetic forms: xformparser/synth_command.py

    register_synth(subparsers)
    from .parse_command import register as register_parse  # images / PDFs -> key-value JSON: parse_command.py

    register_parse(subparsers)
    return parser


def train_model_options(args) -> dict:
    """XFormParserConfig overrides from the train flags."""
    options = {"use_image_branch": args.image_branch, "use_bilstm": not args.no_bilstm,
               "use_label_embedding": not args.no_label_embedding,
               "use_geometric_features": not args.no_geometric_features,
               "use_ser_context": not args.no_ser_context, "use_token_context": args.token_context,
               "context_kind": args.context_kind,
               "window_size": args.window_size, "window_overlap": args.window_overlap,
               "frozen_layers": args.frozen_layers}
    if args.bio_loss_weight is not None:
        options["bio_loss_weight"] = args.bio_loss_weight
    return options


def run_train(args) -> int:
    import torch

    from .training import TrainingOptions, train_parser

    if args.threads:
        torch.set_num_threads(args.threads)
    model_options = train_model_options(args)
    options = TrainingOptions(
        train_path=_resolve_data_path(args.train, args.data_root), eval_path=_resolve_data_path(args.eval, args.data_root),
        output_dir=args.output, backbone=args.backbone, data_format=args.format, tuner=args.tuner,
        epi_tasks=args.epi_tasks, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        learning_rate=args.lr, head_learning_rate=args.head_lr, layout_learning_rate=args.layout_lr, seed=args.seed,
        resume=args.resume, device=args.device,
        key_labels=_labels(args.key_labels), value_labels=_labels(args.value_labels), model_options=model_options,
    )
    # Logs (the Trainer prints its metric dicts to stdout) go to stderr: stdout is the JSON summary only.
    with contextlib.redirect_stdout(sys.stderr):
        summary = train_parser(options)
    report = summary.pop("eval_report")
    if report:
        summary["eval"] = {"ser_micro_f1": report["ser"]["micro"]["f1"], "seqeval_f1": report["seqeval_bio"]["f1"],
                           "re_gold_labels_f1": report["re_gold_labels"]["f1"],
                           "re_end_to_end_f1": report["re_end_to_end"]["f1"]}
    print(json.dumps(summary, indent=2, default=str))
    return 0


def run_evaluate(args) -> int:
    from sft_core.atomic_io import atomic_write_json

    from .defaults import load_parser

    documents = load_documents(_resolve_data_path(args.data, args.data_root), args.format)  # bad data: fail fast
    parser = load_parser(args.model, batch_size=args.batch_size, rule_above_cost=args.rule_above_cost)
    check_page_images(documents, required=parser.model.config.use_image_branch)
    report = parser.evaluate(documents)
    report["model"], report["data"] = str(args.model), str(args.data)
    if args.output:
        atomic_write_json(args.output, report)
    print(json.dumps(report, indent=2))
    return 0


def run_convert(args) -> int:
    errors: list[str] = []
    documents = load_documents(args.input, args.input_format, errors=errors)
    check_page_images(documents)  # converted files name the image; say which ones do not exist
    if documents:
        WRITERS[args.output_format](documents, args.output)
    for message in errors:
        print(f"skipped: {message}", file=sys.stderr)
    print(f"converted {len(documents)} document(s) to {args.output_format} at {args.output}; "
          f"{len(errors)} skipped", file=sys.stderr)
    return 1 if errors or not documents else 0


def run_synth(args) -> int:
    from .synth_command import run

    return run(args)


def run_parse(args) -> int:
    from .parse_command import run

    return run(args)


COMMANDS = {"train": run_train, "evaluate": run_evaluate, "convert": run_convert, "synth": run_synth,
            "parse": run_parse}


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DataFormatError, ValueError) as error:  # bad data, options or model folder: one line, exit 2
        raise UserError(f"xformparser {args.command}: {' '.join(str(error).split())}") from None
    except RuntimeError as error:  # a missing font or package for synth is the user's to install; others are bugs
        if type(error).__name__ != "FontNotFoundError" and "pip install" not in str(error):
            raise
        raise UserError(f"xformparser {args.command}: {' '.join(str(error).split())}") from None


def main(argv: list[str] | None = None) -> int:
    """Every subcommand: user errors -> one ``error: ...`` line on stderr, exit code 2 (sft_core.cli_errors)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
