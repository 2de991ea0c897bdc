"""FUNSD benchmark for xformparser: SER, seqeval BIO, RE (gold and predicted labels), rule baselines, ablations.

    python benchmarks/xformparser_funsd.py [--data-root ../shared/datasets] [--main-epochs 15] [--ablation-epochs 8]

Protocol: the 149 FUNSD training forms are split 134 train / 15 dev (the last 15 by file name; the dev
set picks the best checkpoint); every number is on the 50 test forms. Runs are sequential in one
process (the frozen-layer cache is shared). Results are rewritten after every run, so a partial
benchmark still publishes what it measured. Writes docs/results/xformparser_funsd.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import torch  # noqa: E402

from xformparser.evaluation import FormParser, rule_baseline  # noqa: E402
from xformparser.formats import load_documents  # noqa: E402
from sft_core.atomic_io import atomic_write_json  # noqa: E402
from xformparser.training import TrainingOptions, train_parser  # noqa: E402

DEV_DOCUMENTS = 15


def ablation_runs(main_epochs: float, ablation_steps: int) -> list[dict]:
    """Name, what differs from the main configuration, and the training budget of every run. Ablations
    share one optimizer-step budget (EPI with objective tasks sees each form twice per epoch, so equal
    steps means half the epochs)."""
    main = {"epochs": main_epochs, "max_steps": -1}
    short = {"epochs": 1000.0, "max_steps": ablation_steps}
    return [
        {"name": "main", "change": "full model (Bi-LSTM, label embedding, geometric features; no image)", **main},
        {"name": "reference_short", "change": "main configuration at the ablation budget", **short},
        {"name": "no_geometric_features", "change": "without geometric pair features", **short,
         "model": {"use_geometric_features": False}},
        {"name": "no_label_embedding", "change": "without the SER label embedding", **short,
         "model": {"use_label_embedding": False}},
        {"name": "no_bilstm", "change": "without the entity Bi-LSTM (per-entity MLP instead)", **short,
         "model": {"use_bilstm": False}},
        {"name": "image_branch", "change": "with the page-image CNN branch", **short,
         "model": {"use_image_branch": True}},
        {"name": "epi", "change": "EPI tuner, tasks = SER and RE objectives (same step budget)", **short,
         "tuner": "epi"},
        {"name": "top2_finetuned", "change": "top 2 encoder layers fine-tuned (frozen_layers=4: embeddings + bottom 4 "
                                            "layers cached, layout added at layer 4; encoder lr 1e-4)", **short,
         "model": {"frozen_layers": 4}, "learning_rate": 1e-4},
        {"name": "top4_finetuned", "change": "top 4 encoder layers fine-tuned (frozen_layers=2: embeddings + bottom 2 "
                                            "layers cached, layout added at layer 2; encoder lr 1e-4)", **short,
         "model": {"frozen_layers": 2}, "learning_rate": 1e-4},
    ]


def run_one(spec, args, train_documents, dev_documents, test_documents, log) -> dict:
    output_dir = Path(args.runs_dir) / spec["name"]
    model_options = {"frozen_layers": args.frozen_layers, **spec.get("model", {})}
    options = TrainingOptions(
        train_path="funsd/training_data[:134]", eval_path="funsd/training_data[134:]", output_dir=str(output_dir),
        backbone=args.backbone, tuner=spec.get("tuner", "full"), epi_tasks="objectives", epochs=spec["epochs"],
        max_steps=spec["max_steps"], batch_size=args.batch_size, seed=args.seed, model_options=model_options,
        learning_rate=spec.get("learning_rate", TrainingOptions.learning_rate),
        show_progress=args.progress, logging_steps=25,
    )
    started = time.time()
    summary = train_parser(options, train_documents=train_documents, eval_documents=dev_documents)
    train_seconds = time.time() - started
    parser = FormParser.from_pretrained(output_dir, batch_size=args.batch_size)
    report = parser.evaluate(test_documents)
    result = {
        "name": spec["name"], "change": spec["change"], "tuner": options.tuner, "model_options": model_options,
        "budget": {"optimizer_steps": summary["global_steps"], "epochs": round(summary["epochs"], 2),
                   "batch_size": args.batch_size, "train_documents": len(train_documents),
                   "frozen_layers": model_options["frozen_layers"], "encoder_learning_rate": options.learning_rate,
                   "train_wall_seconds": round(train_seconds, 1)},
        "best_dev_selection_f1": summary["best_metric"], "best_checkpoint": summary["best_checkpoint"],
        "test": report,
    }
    log(f"{spec['name']}: SER micro-F1 {report['ser']['micro']['f1']:.4f}, seqeval {report['seqeval_bio']['f1']:.4f}, "
        f"RE gold-label F1 {report['re_gold_labels']['f1']:.4f}, RE end-to-end F1 {report['re_end_to_end']['f1']:.4f} "
        f"({summary['global_steps']} steps, {train_seconds:.0f}s)")
    return result


def _f(value) -> str:
    return f"{value:.3f}"


def render_markdown(payload: dict) -> str:
    lines = ["# xformparser on FUNSD (test set, 50 forms)", "",
             f"Command: `{payload['command']}`  ",
             *[f"Merged run (same protocol, separate process): `{command}`  " for command in payload.get("merged_commands", [])],
             f"Machine: {payload['machine']}  ",
             f"Protocol: {payload['protocol']}", "",
             "## Rule baselines (gold entities, gold labels; no training)", "",
             "| rule | RE P | RE R | RE F1 | links |", "|---|---|---|---|---|"]
    for name, scores in payload["rule_baselines"].items():
        lines.append(f"| {name} | {_f(scores['precision'])} | {_f(scores['recall'])} | {_f(scores['f1'])} | {scores['support']} |")
    lines += ["", "## Learned model and ablations", "",
              "SER = entity-level micro-F1 over all 4 labels on gold entity boxes (= accuracy); seqeval = span F1 "
              "of the token BIO head over words; RE = P/R/F1 over all gold question->answer links "
              "(gold entities), with gold SER labels and end to end with predicted labels.", "",
              "| run | change | frozen layers | steps | epochs | train wall (s) | SER micro-F1 | seqeval F1 "
              "| RE F1 gold labels (P/R) | RE F1 end to end (P/R) | rule, predicted labels F1 |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in payload["runs"]:
        test, budget = run["test"], run["budget"]
        gold, e2e = test["re_gold_labels"], test["re_end_to_end"]
        lines.append(
            f"| {run['name']} | {run['change']} | {run['model_options'].get('frozen_layers', '-')} of 6 | "
            f"{budget['optimizer_steps']} | {budget['epochs']} | "
            f"{budget['train_wall_seconds']} | {_f(test['ser']['micro']['f1'])} | {_f(test['seqeval_bio']['f1'])} | "
            f"{_f(gold['f1'])} ({_f(gold['precision'])}/{_f(gold['recall'])}) | "
            f"{_f(e2e['f1'])} ({_f(e2e['precision'])}/{_f(e2e['recall'])}) | {_f(test['re_rule_end_to_end']['f1'])} |")
    if payload.get("failed"):
        lines += ["", "Failed runs: " + "; ".join(f"{k}: {v}" for k, v in payload["failed"].items())]
    if payload.get("not_run"):
        lines += ["", "Not run (time budget): " + ", ".join(payload["not_run"])]
    if payload.get("notes"):
        lines += ["", "## Notes", "", *[f"- {note}" for note in payload["notes"]]]
    return "\n".join(lines) + "\n"


def publish(payload: dict, results_dir: Path) -> None:
    atomic_write_json(results_dir / "xformparser_funsd.json", payload)
    markdown_path = results_dir / "xformparser_funsd.md"
    temp = markdown_path.with_suffix(".md.tmp")
    temp.write_text(render_markdown(payload), encoding="utf-8")
    os.replace(temp, markdown_path)


def merge_results(results_dir: Path, sources: list[Path]) -> int:
    payload = json.loads((results_dir / "xformparser_funsd.json").read_text())
    order = [spec["name"] for spec in ablation_runs(0, 0)]
    for source in sources:
        other = json.loads(source.read_text())
        names = {run["name"] for run in other["runs"]}
        payload["runs"] = [run for run in payload["runs"] if run["name"] not in names] + other["runs"]
        payload["failed"].update(other.get("failed", {}))
        payload["not_run"] = [name for name in payload.get("not_run", []) if name not in names]
        payload.setdefault("merged_commands", []).append(other["command"])
    payload["runs"].sort(key=lambda run: order.index(run["name"]) if run["name"] in order else len(order))
    publish(payload, results_dir)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", str(PROJECT_ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--main-epochs", type=float, default=15.0)
    parser.add_argument("--ablation-epochs", type=float, default=8.0,
                        help="ablation budget in epochs of the train split (converted to optimizer steps)")
    parser.add_argument("--frozen-layers", type=int, default=6,
                        help="frozen (cached) encoder layers; 6 = the whole MiniLM, layout added on its output")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--runs", help="comma-separated subset of run names")
    parser.add_argument("--max-documents", type=int, help="smoke test: use only this many train/test documents")
    parser.add_argument("--deadline-minutes", type=float, help="skip remaining runs after this much wall time")
    parser.add_argument("--runs-dir", default=str(PROJECT_ROOT / "runs" / "xformparser_funsd"))
    parser.add_argument("--results-dir", default=str(PROJECT_ROOT / "docs" / "results"))
    parser.add_argument("--progress", action="store_true", help="show the trainer's progress bar")
    parser.add_argument("--merge-from", nargs="+",
                        help="only merge: add the runs of these result JSONs (same protocol, run in parallel "
                             "processes) to --results-dir's JSON, re-render the markdown and exit")
    args = parser.parse_args(argv)
    if args.merge_from:
        return merge_results(Path(args.results_dir), [Path(p) for p in args.merge_from])
    torch.set_num_threads(args.threads)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - started:6.0f}s] {message}", flush=True)

    funsd = Path(args.data_root) / "funsd"
    if not funsd.is_dir():
        print(f"FUNSD not found under {args.data_root} (use --data-root)", file=sys.stderr)
        return 2
    train_all = load_documents(funsd / "training_data")
    test_documents = load_documents(funsd / "testing_data")
    train_documents, dev_documents = train_all[:-DEV_DOCUMENTS], train_all[-DEV_DOCUMENTS:]
    if args.max_documents:
        train_documents, test_documents = train_documents[: args.max_documents], test_documents[: args.max_documents]
        dev_documents = dev_documents[: max(2, args.max_documents // 4)]
    log(f"data: {len(train_documents)} train / {len(dev_documents)} dev / {len(test_documents)} test forms")

    payload = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs, torch threads={args.threads}, "
                   f"torch {torch.__version__}",
        "protocol": (f"FUNSD train {len(train_documents)} / dev {len(dev_documents)} (best checkpoint by dev "
                     f"mean(SER micro-F1, end-to-end RE F1)) / test {len(test_documents)}; backbone {args.backbone} with "
                     f"embeddings + bottom {args.frozen_layers} layers frozen and cached, layout embeddings at layer "
                     f"{args.frozen_layers}; batch {args.batch_size} forms; AdamW lr 5e-5 encoder / 1e-3 heads, linear decay; "
                     f"seed {args.seed}."),
        "rule_baselines": {
            "answer -> question on its line to the left, else nearest question above (box gap)":
                rule_baseline(test_documents, above_cost="box"),
            "same, nearest above by left-edge/centre distance (xformparser default rule linker)":
                rule_baseline(test_documents, above_cost="left_edge"),
        },
        "runs": [], "failed": {}, "not_run": [],
    }
    for name, scores in payload["rule_baselines"].items():
        log(f"rule baseline ({name}): F1 {scores['f1']:.4f} P {scores['precision']:.4f} R {scores['recall']:.4f}")
    results_dir = Path(args.results_dir)
    publish(payload, results_dir)

    steps_per_epoch = -(-len(train_documents) // args.batch_size)
    specs = ablation_runs(args.main_epochs, int(round(args.ablation_epochs * steps_per_epoch)))
    if args.runs:
        wanted = set(args.runs.split(","))
        specs = [spec for spec in specs if spec["name"] in wanted]
    for spec in specs:
        if args.deadline_minutes and time.time() - started > args.deadline_minutes * 60:
            payload["not_run"].append(spec["name"])
            log(f"skipping {spec['name']}: past the {args.deadline_minutes} min deadline")
            continue
        log(f"run {spec['name']}: {spec['change']}")
        try:
            payload["runs"].append(run_one(spec, args, train_documents, dev_documents, test_documents, log))
        except Exception as error:  # one failed run must not lose the others
            payload["failed"][spec["name"]] = f"{type(error).__name__}: {error}"
            log(f"run {spec['name']} FAILED: {error}")
        payload["total_wall_seconds"] = round(time.time() - started, 1)
        publish(payload, results_dir)
    log(f"done in {time.time() - started:.0f}s")
    return 1 if payload["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
