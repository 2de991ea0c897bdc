"""Rebuild the parser that ships in xformparser/default_model/ (see docs/xformparser.md, "The default model").

    python scripts/train_default_parser.py [--data-root ../shared/datasets] [--epochs 6] [--threads 2]

1. Training data: FUNSD train (149 forms; the last 15 by file name are held out as the dev set that picks
   the best epoch) plus synthetic forms from ``xformparser.synth.generate_dataset`` (``--synth-per-language``
   forms in each of ``--synth-langs``; 0 turns them off). FUNSD is a research dataset (Jaume et al., 2019,
   noisy scanned forms from the RVL-CDIP collection): check its terms before any other use.
2. Recipe: the documented default of ``xformparser train`` (minilm-l6, whole encoder fine-tuned, word
   embeddings frozen, neighbour-attention context), with this script's epochs and learning rates.
3. Export: only what differs from minilm-l6 (xformparser.defaults.export_backbone_delta: heads and layout
   embeddings in fp16, encoder differences in fp16, the layer matrices as rank-r factors), at most
   ``--max-mb`` MB; the exported model is scored again on FUNSD test, and both scores go in the manifest.

Writes the model folder atomically (``--output``, default xformparser/default_model) and its
training run under ``--runs-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

DEV_DOCUMENTS = 15
SYNTH_LABELS = {"header", "question", "answer", "other"}


def _log(message: str) -> None:
    print(f"[train_default_parser] {message}", file=sys.stderr, flush=True)


def _scores(report: dict) -> dict:
    return {"ser_micro_f1": round(report["ser"]["micro"]["f1"], 4), "seqeval_f1": round(report["seqeval_bio"]["f1"], 4),
            "re_f1_gold_labels": round(report["re_gold_labels"]["f1"], 4),
            "re_f1_end_to_end": round(report["re_end_to_end"]["f1"], 4), "documents": report["documents"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", str(PROJECT_ROOT.parent / "shared/datasets")))
    parser.add_argument("--output", default=str(PROJECT_ROOT / "xformparser/default_model"))
    parser.add_argument("--runs-dir", default="runs/default_parser")
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=1e-4, help="encoder learning rate")
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--layout-lr", type=float, help="layout-embedding learning rate (default: the encoder's)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--synth-per-language", type=int, default=2)
    parser.add_argument("--synth-langs", default="en,de,fr,es,it")
    parser.add_argument("--rank", type=int, default=64, help="rank of the encoder-difference factors (upper bound)")
    parser.add_argument("--max-mb", type=float, default=14.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--from-run", metavar="MODEL_DIR",
                        help="skip training: export a run already trained with this recipe and data (e.g. a seed of "
                             "benchmarks/xformparser_funsd.py), using its training_summary.json")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=JSON",
                        help="XFormParserConfig override, e.g. context_kind=\"bilstm\"")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from xformparser.defaults import export_backbone_delta, load_parser
    from xformparser.evaluation import FormParser
    from xformparser.formats import load_documents
    from xformparser.training import TrainingOptions, synthetic_training_documents, train_parser

    started = time.time()
    funsd = Path(args.data_root) / "funsd"
    train_all = sorted(load_documents(str(funsd / "training_data")), key=lambda d: d.doc_id)
    test_documents = load_documents(str(funsd / "testing_data"))
    train_documents, dev_documents = train_all[:-DEV_DOCUMENTS], train_all[-DEV_DOCUMENTS:]
    synth = []
    langs = [lang for lang in args.synth_langs.split(",") if lang]
    if args.synth_per_language > 0 and langs and not args.from_run:
        synth = synthetic_training_documents(Path(args.runs_dir) / "synth", args.synth_per_language, langs, args.seed,
                                             allowed_labels=SYNTH_LABELS)
        _log(f"{len(synth)} synthetic forms ({', '.join(langs)})")
    model_options = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.model_option)}
    options = TrainingOptions(
        train_path=f"{funsd}/training_data (first {len(train_documents)}) + synthetic", output_dir=str(Path(args.runs_dir) / "model"),
        eval_path=f"{funsd}/training_data (last {DEV_DOCUMENTS})", backbone="minilm-l6", epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, head_learning_rate=args.head_lr, seed=args.seed,
        layout_learning_rate=args.layout_lr,
        model_options=model_options, logging_steps=25,
    )
    if args.from_run:
        options.output_dir = args.from_run
        summary = json.loads((Path(args.from_run) / "training_summary.json").read_text())
        synth = [None] * (summary["train_documents"] - len(train_documents))  # only counted below
        run_options = summary["options"]
        args.epochs, args.lr, args.head_lr, args.seed = (run_options["epochs"], run_options["learning_rate"],
                                                          run_options["head_learning_rate"], run_options["seed"])
        # runs from before the option existed gave the layout embeddings the heads' rate
        args.layout_lr = run_options.get("layout_learning_rate", run_options["head_learning_rate"])
    else:
        summary = train_parser(options, train_documents=train_documents + synth, eval_documents=dev_documents)
    _log(f"trained {summary['global_steps']} steps in {summary['wall_seconds']} s; best dev {summary['best_metric']}")

    trained = FormParser.from_pretrained(options.output_dir, batch_size=4)
    trained_scores = _scores(trained.evaluate(test_documents, include_rule_baseline=False))
    _log(f"trained model on FUNSD test: {trained_scores}")
    metadata = {
        "training_data": {
            "funsd_train_forms": len(train_documents), "funsd_dev_forms_for_selection": len(dev_documents),
            "synthetic_forms": len(synth), "synthetic_languages": langs if synth else [],
            "note": "FUNSD (Jaume et al., 2019) is a research dataset of scanned forms; check its terms for other uses.",
        },
        "recipe": {"backbone": "minilm-l6", "epochs": args.epochs, "encoder_lr": args.lr, "head_lr": args.head_lr,
                   "layout_lr": args.layout_lr if args.layout_lr is not None else args.lr,
                   "batch_size": args.batch_size, "seed": args.seed, "optimizer_steps": summary["global_steps"],
                   "best_checkpoint": Path(summary["best_checkpoint"] or "").name, "model_options": model_options,
                   "train_wall_seconds": summary["wall_seconds"]},
        "funsd_test_before_export": trained_scores,
        "command": "python scripts/train_default_parser.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "reproduce": (f"python scripts/train_default_parser.py --epochs {args.epochs:g} --lr {args.lr:g} --head-lr "
                      f"{args.head_lr:g} --seed {args.seed}" + (f" --layout-lr {args.layout_lr:g}" if args.layout_lr else "")),
    }
    manifest = export_backbone_delta(trained.model, args.output, rank=args.rank, max_bytes=int(args.max_mb * 1e6),
                                     metadata=metadata)
    exported_scores = _scores(load_parser(args.output, batch_size=4).evaluate(test_documents, include_rule_baseline=False))
    manifest["funsd_test"] = exported_scores
    from sft_core.atomic_io import atomic_write_json

    atomic_write_json(Path(args.output) / "delta_manifest.json", manifest)
    _log(f"exported (rank {manifest['low_rank']}, {manifest['weights_bytes'] / 1e6:.1f} MB): FUNSD test {exported_scores}; "
         f"total {time.time() - started:.0f} s")
    print(json.dumps({"output": args.output, "funsd_test": exported_scores, "before_export": trained_scores,
                      "low_rank": manifest["low_rank"], "weights_bytes": manifest["weights_bytes"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
