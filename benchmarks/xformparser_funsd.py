"""FUNSD benchmark for xformparser: the full-fine-tuning recipe over seeds (SER, seqeval, RE with gold and
predicted labels, joint SER/RE decoding, line splitting), rule baselines, and earlier protocols' records.

    python benchmarks/xformparser_funsd.py --seeds 43,44 [--data-root ../shared/datasets] [--threads 1]
    python benchmarks/xformparser_funsd.py --add-run seed42=runs/default_parser_v1/model   # a run trained elsewhere

Protocol: the 149 FUNSD training forms sorted by file name are split 134 train / 15 dev (the last 15; the
dev set picks the best epoch); the training set also holds the recipe's synthetic forms
(xformparser.synth, fixed synth seed); every number is on the 50 FUNSD test forms with gold entity boxes.
The recipe (``RECIPE``) is the default of ``xformparser train`` and of scripts/train_default_parser.py;
``--add-run`` scores a run trained by that script with the same recipe and split (its training summary
gives the budget). Runs are merged into docs/results/xformparser_funsd.json by name, so seeds can be
trained in separate processes, one at a time. ``summary`` = means over the recipe runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import torch  # noqa: E402

from sft_core.atomic_io import atomic_write_json, atomic_write_text  # noqa: E402
from xformparser.evaluation import FormParser, rule_baseline  # noqa: E402
from xformparser.formats import load_documents  # noqa: E402
from xformparser.training import TrainingOptions, synthetic_training_documents, train_parser  # noqa: E402

DEV_DOCUMENTS = 15
SYNTH_SEED = 42
RECIPE = {
    "backbone": "minilm-l6", "frozen_layers": 0, "epochs": TrainingOptions.epochs, "batch_size": TrainingOptions.batch_size,
    "encoder_lr": TrainingOptions.learning_rate, "head_lr": TrainingOptions.head_learning_rate,
    "synth_per_language": 2, "synth_langs": ["en", "de", "fr", "es", "it"], "layout_lr": "encoder lr",
    "model": "XFormParserConfig defaults: neighbour-attention entity context (16 nearest, relative-position bias), "
             "label embedding, geometric pair features, no token Bi-LSTM, word embeddings frozen, attention dropout 0",
}
METRICS = ("ser_micro_f1", "seqeval_f1", "re_f1_gold_labels", "re_f1_end_to_end")
# Runs trained before layout_learning_rate existed gave the layout embeddings the heads' rate (1e-3).
LAYOUT_LR_VARIANTS = {"encoder": "layout embeddings at the encoder lr (default)", "head": "layout embeddings at the head lr"}
DEFAULT_VARIANT = "encoder"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def headline(report: dict) -> dict:
    return {"ser_micro_f1": report["ser"]["micro"]["f1"], "seqeval_f1": report["seqeval_bio"]["f1"],
            "re_f1_gold_labels": report["re_gold_labels"]["f1"], "re_f1_end_to_end": report["re_end_to_end"]["f1"],
            "joint_ser_micro_f1": report["joint_inference"]["ser"]["f1"],
            "joint_re_f1_end_to_end": report["joint_inference"]["re_end_to_end"]["f1"],
            "line_split_exact": report["line_splitting"]["exact"],
            "line_split_boundaries": report["line_splitting"]["boundaries"],
            "line_split_spans": report["line_splitting"]["spans"],
            "rule_linker_predicted_labels_f1": report["re_rule_end_to_end"]["f1"]}


def score_run(name: str, model_dir: Path, test_documents, training_summary: dict, trained_by: str) -> dict:
    report = FormParser.from_pretrained(model_dir, batch_size=4).evaluate(test_documents)
    epochs = training_summary.get("epochs") or 0
    runtime = training_summary.get("train_runtime_seconds")
    return {
        "name": name, "seed": training_summary.get("options", {}).get("seed"), "trained_by": trained_by,
        "model_dir": str(model_dir),
        "budget": {"optimizer_steps": training_summary.get("global_steps"), "epochs": round(epochs, 2),
                   "train_documents": training_summary.get("train_documents"),
                   "train_wall_seconds": training_summary.get("wall_seconds"),
                   "train_runtime_seconds": runtime, "train_cpu_seconds": training_summary.get("train_cpu_seconds"),
                   "best_checkpoint": Path(training_summary.get("best_checkpoint") or "").name},
        "scores": headline(report), "test": report,
    }


def train_seed(seed: int, args, funsd_train, dev_documents, test_documents, variant: str = DEFAULT_VARIANT) -> dict:
    synth = synthetic_training_documents(Path(args.runs_dir) / "synth", RECIPE["synth_per_language"], RECIPE["synth_langs"],
                                         SYNTH_SEED, allowed_labels={"header", "question", "answer", "other"})
    name = f"seed{seed}_layout_lr_{variant}"  # plain "seedN" runs are older ones (layout at the head lr)
    output_dir = Path(args.runs_dir) / name
    options = TrainingOptions(train_path="funsd/training_data[:134] + synthetic", eval_path="funsd/training_data[134:]",
                              output_dir=str(output_dir), backbone=RECIPE["backbone"], seed=seed, logging_steps=25,
                              show_progress=args.progress,
                              layout_learning_rate=TrainingOptions.head_learning_rate if variant == "head" else None)
    summary = train_parser(options, train_documents=funsd_train + synth, eval_documents=dev_documents)
    run = score_run(name, output_dir, test_documents, summary, "benchmarks/xformparser_funsd.py")
    run["variant"] = variant
    return run


def _mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4), "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def summarize(runs: list[dict], speed: dict | None) -> dict:
    # the recipe's runs only: layout embeddings at the encoder lr, and the recipe's epochs
    runs = [run for run in runs if run.get("variant", "head") == DEFAULT_VARIANT
            and abs((run["budget"].get("epochs") or 0) - RECIPE["epochs"]) < 0.01]
    if not runs:
        return {}
    summary = {metric: round(statistics.mean(run["scores"][metric] for run in runs), 4) for metric in METRICS}
    summary["seeds"] = [run["seed"] for run in runs]
    # Per epoch of these runs (144 forms; includes the per-epoch dev evaluation and checkpoint save).
    walls = [run["budget"]["train_runtime_seconds"] / run["budget"]["epochs"] for run in runs
             if run["budget"].get("train_runtime_seconds") and run["budget"].get("epochs")]
    cpus = [run["budget"]["train_cpu_seconds"] / run["budget"]["epochs"] for run in runs
            if run["budget"].get("train_cpu_seconds") and run["budget"].get("epochs")]
    summary["epoch_seconds_full_finetune"] = round(statistics.median(walls), 1) if walls else None
    summary["epoch_cpu_seconds_full_finetune"] = round(statistics.median(cpus), 1) if cpus else None
    if speed and speed.get("epoch_seconds"):
        summary["epoch_seconds_full_finetune_dedicated"] = speed["epoch_seconds"]
    summary["spread"] = {metric: _mean_std([run["scores"][metric] for run in runs])
                         for metric in (*METRICS, "joint_ser_micro_f1", "joint_re_f1_end_to_end", "line_split_exact",
                                        "line_split_boundaries")}
    return summary


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_markdown(payload: dict) -> str:
    summary, spread = payload.get("summary", {}), payload.get("summary", {}).get("spread", {})
    lines = ["# xformparser on FUNSD (test set, 50 forms, gold entity boxes)", "",
             f"Machine: {payload['machine']}  ", f"Protocol: {payload['protocol']}  ",
             (f"Recipe of this script's CPU runs: {json.dumps(payload['recipe'])}  " if summary.get("source") == "xformparser_sweep"
              else f"Recipe (the default of `xformparser train`): {json.dumps(payload['recipe'])}"),
             *([f"Default of `xformparser train` (dev-selected in the sweep, xformparser_sweep.md): "
                f"{json.dumps(summary.get('recipe'))}"] if summary.get("source") == "xformparser_sweep" else []), "",
             "Commands:", "", *[f"- `{command}`" for command in payload.get("commands", [])], "",
             "## Summary (mean over seeds)", ""]
    if summary.get("source") == "xformparser_sweep":
        lines += [f"From the sweep (xformparser_sweep.md): the dev-selected recipe {json.dumps(summary.get('recipe'))}, "
                  f"{summary.get('selection')}. {summary.get('epoch_seconds_note', '')}.", ""]
    lines += ["| metric | mean | std | target (issue 11) |", "|---|---|---|---|"]
    targets = {"ser_micro_f1": 0.85, "seqeval_f1": 0.60, "re_f1_gold_labels": 0.95, "re_f1_end_to_end": 0.75}
    for metric, values in spread.items():
        lines.append(f"| {metric} | {_f(values['mean'])} | {_f(values['std'])} | {targets.get(metric, '-')} |")
    lines += ["", f"Seeds: {summary.get('seeds')}; one epoch of full fine-tuning (144 forms, incl. dev evaluation and "
              f"checkpoint; median over runs): {summary.get('epoch_seconds_full_finetune')} s wall, "
              f"{summary.get('epoch_cpu_seconds_full_finetune')} s of this process's CPU time (the machine was shared; "
              "see xformparser_speed.md).", "",
              "## Runs", "",
              "| run | seed | steps | epochs | train wall (s) | train CPU (s) | best | SER micro-F1 | seqeval | RE gold labels "
              "| RE end to end | joint SER | joint RE e2e | line split exact / boundaries (spans) | rule linker, predicted labels |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in payload["runs"]:
        s, b = run["scores"], run["budget"]
        lines.append(f"| {run['name']} ({LAYOUT_LR_VARIANTS[run.get('variant', 'head')]}) | {run['seed']} | {b['optimizer_steps']} | {b['epochs']} | {b['train_wall_seconds']} | "
                     f"{b['train_cpu_seconds'] or '-'} | {b['best_checkpoint']} | {_f(s['ser_micro_f1'])} | {_f(s['seqeval_f1'])} | "
                     f"{_f(s['re_f1_gold_labels'])} | {_f(s['re_f1_end_to_end'])} | {_f(s['joint_ser_micro_f1'])} | "
                     f"{_f(s['joint_re_f1_end_to_end'])} | {_f(s['line_split_exact'])} / {_f(s['line_split_boundaries'])} "
                     f"({s['line_split_spans']}) | {_f(s['rule_linker_predicted_labels_f1'])} |")
    lines += ["", "## Rule baselines (gold entities, gold labels; no training)", "",
              "| rule | RE P | RE R | RE F1 | links |", "|---|---|---|---|---|"]
    for name, scores in payload["rule_baselines"].items():
        lines.append(f"| {name} | {_f(scores['precision'])} | {_f(scores['recall'])} | {_f(scores['f1'])} | {scores['support']} |")
    previous = payload.get("previous_protocol", {})
    if previous.get("runs"):
        lines += ["", "## Earlier protocol (frozen or partly frozen encoder; code before the speed work)", "",
                  f"{previous.get('protocol', '')}", "",
                  "| run | change | frozen layers | steps | train wall (s) | SER micro-F1 | seqeval | RE gold labels | RE end to end |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for run in previous["runs"]:
            test, budget = run["test"], run["budget"]
            lines.append(f"| {run['name']} | {run['change']} | {run['model_options'].get('frozen_layers', '-')} | "
                         f"{budget['optimizer_steps']} | {budget['train_wall_seconds']} | {_f(test['ser']['micro']['f1'])} | "
                         f"{_f(test['seqeval_bio']['f1'])} | {_f(test['re_gold_labels']['f1'])} | {_f(test['re_end_to_end']['f1'])} |")
    if payload.get("notes"):
        lines += ["", "## Notes", "", *[f"- {note}" for note in payload["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", str(PROJECT_ROOT.parent / "shared/datasets")))
    parser.add_argument("--seeds", default="", help="comma-separated seeds of the recipe to train here")
    parser.add_argument("--add-run", action="append", default=[], metavar="NAME=MODEL_DIR",
                        help="score a model dir trained with the recipe elsewhere (needs its training_summary.json)")
    parser.add_argument("--variant", default=DEFAULT_VARIANT, choices=sorted(LAYOUT_LR_VARIANTS),
                        help="layout-embedding learning rate of the seeds trained here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs-dir", default=str(PROJECT_ROOT / "runs" / "xformparser_funsd_recipe"))
    parser.add_argument("--results-dir", default=str(PROJECT_ROOT / "docs" / "results"))
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    funsd = Path(args.data_root) / "funsd"
    if not funsd.is_dir():
        print(f"error: FUNSD not found under {args.data_root} (use --data-root)", file=sys.stderr)
        return 2
    train_all = sorted(load_documents(funsd / "training_data"), key=lambda d: d.doc_id)
    funsd_train, dev_documents = train_all[:-DEV_DOCUMENTS], train_all[-DEV_DOCUMENTS:]
    test_documents = load_documents(funsd / "testing_data")

    results_dir = Path(args.results_dir)
    json_path = results_dir / "xformparser_funsd.json"
    payload = json.loads(json_path.read_text()) if json_path.exists() else {}
    if "recipe" not in payload:  # first run of this protocol: keep the earlier protocol's records beside it
        payload = {"previous_protocol": {key: payload[key] for key in ("protocol", "runs", "command", "merged_commands", "notes")
                                         if key in payload}, "runs": [], "commands": []}
    payload.update({
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs (often 7+ processes), "
                   f"torch threads={args.threads}, torch {torch.__version__}",
        "protocol": f"FUNSD train {len(funsd_train)} + {len(RECIPE['synth_langs']) * RECIPE['synth_per_language']} synthetic "
                    f"forms / dev {len(dev_documents)} (best epoch by dev mean(SER micro-F1, end-to-end RE F1)) / test "
                    f"{len(test_documents)}; gold entity boxes at test time",
        "recipe": RECIPE,
        "rule_baselines": {
            "answer -> question on its line to the left, else nearest question above (box gap)":
                rule_baseline(test_documents, above_cost="box"),
            "same, nearest above by left-edge/centre distance (xformparser default rule linker)":
                rule_baseline(test_documents, above_cost="left_edge"),
        },
    })
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/xformparser_funsd.py", *(argv if argv is not None else sys.argv[1:])])
    payload.setdefault("commands", []).append(command)

    def publish():
        speed_path = results_dir / "xformparser_speed.json"
        speed = json.loads(speed_path.read_text()).get("summary") if speed_path.exists() else None
        if payload.get("summary", {}).get("source") == "xformparser_sweep":
            # The summary is the sweep's dev-selected recipe (benchmarks/xformparser_sweep.py --report): keep it;
            # this script's own runs are summarised beside it.
            payload["cpu_runs_summary"] = summarize(payload["runs"], speed)
        else:
            payload["summary"] = summarize(payload["runs"], speed)
        atomic_write_json(json_path, payload)
        atomic_write_text(results_dir / "xformparser_funsd.md", render_markdown(payload))

    def add(run):
        payload["runs"] = [r for r in payload["runs"] if r["name"] != run["name"]] + [run]
        payload["runs"].sort(key=lambda r: r["name"])
        _log(f"{run['name']}: {json.dumps({k: round(v, 4) for k, v in run['scores'].items()})}")
        publish()

    for item in args.add_run:
        name, _, model_dir = item.partition("=")
        summary = json.loads((Path(model_dir) / "training_summary.json").read_text())
        add(score_run(name, Path(model_dir), test_documents, summary, "scripts/train_default_parser.py"))
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        _log(f"training seed {seed}")
        add(train_seed(seed, args, funsd_train, dev_documents, test_documents, args.variant))
    publish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
