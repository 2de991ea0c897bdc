"""Where a full fine-tuning step of xformparser spends its time, and how long an epoch of FUNSD train takes.

    python benchmarks/xformparser_speed.py [--data-root ../shared/datasets] [--steps 12] [--threads 1]
        [--label after] [--epoch]

Builds the parser on minilm-l6 with the whole encoder trainable (``frozen_layers=0``), encodes FUNSD
train and times optimizer steps of 2 forms (the training default) phase by phase: collation (windows,
padding), backbone forward, heads forward (entity pooling, SER/BIO, RE incl. geometric pair features),
backward, optimizer. ``--epoch`` also runs one real epoch through ``train_parser`` (the CLI's entry
point; no evaluation, no checkpoint) and reports its wall time. Results are merged by ``--label`` into
docs/results/xformparser_speed.{json,md}, so a profile of the old code ("before", run with the old
package first on PYTHONPATH) and of the new one ("after") sit side by side.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shlex
import statistics
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.append(str(PROJECT_ROOT))  # appended: a PYTHONPATH copy of an older xformparser wins

import torch  # noqa: E402

import xformparser  # noqa: E402
from sft_core.atomic_io import atomic_write_json, atomic_write_text  # noqa: E402
from sft_core.hub import resolve_model  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from xformparser.features import XFormParserCollator, encode_document  # noqa: E402
from xformparser.formats import load_documents  # noqa: E402
from xformparser.training import build_parser_model  # noqa: E402

PHASES = ("collate", "backbone_forward", "heads_forward", "backward", "optimizer")


def _timed_step(model, collator, chunk, optimizer) -> dict[str, float]:
    times = {}
    cpu_start = time.process_time()
    start = time.perf_counter()
    batch = collator(chunk)
    times["collate"] = time.perf_counter() - start

    start = time.perf_counter()
    num_docs, num_tokens = batch["token_entity"].shape
    window_states = model.backbone(batch["input_ids"], batch["bbox"], batch["attention_mask"], None)
    times["backbone_forward"] = time.perf_counter() - start

    # The same forward as XFormParserModel.forward, with the backbone output reused (timed separately).
    start = time.perf_counter()
    original_backbone_forward = model.backbone.forward
    model.backbone.forward = lambda *args, **kwargs: window_states
    try:
        output = model(**batch)
    finally:
        model.backbone.forward = original_backbone_forward
    times["heads_forward"] = time.perf_counter() - start

    start = time.perf_counter()
    output.loss.backward()
    times["backward"] = time.perf_counter() - start

    start = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times["optimizer"] = time.perf_counter() - start
    times["cpu"] = time.process_time() - cpu_start  # this process's CPU seconds: what contention does not inflate
    times["windows"] = batch["input_ids"].shape[0]
    times["padded_tokens"] = int(batch["input_ids"].numel())
    times["real_tokens"] = int(batch["attention_mask"].sum())
    return times


def profile_steps(args, documents, tokenizer, backbone_path) -> dict:
    torch.manual_seed(0)
    labels = sorted({e.label for d in documents for e in d.entities})
    model = build_parser_model(backbone_path, labels, ["question"], ["answer"], {"frozen_layers": 0})
    model.train()
    config = model.config
    encoded = [encode_document(d, tokenizer, labels, ["question"], ["answer"]) for d in documents]
    collator = XFormParserCollator(tokenizer, config.window_size, config.window_overlap)
    # As XFormParserTrainer builds it: trainable parameters only, one foreach update.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, foreach=True)
    # Fixed, spread-out documents so before/after profile the same batches.
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].doc_id)
    chunks = [[encoded[order[(7 * s) % len(order)]], encoded[order[(7 * s + 3) % len(order)]]]
              for s in range(args.steps + 1)]
    _timed_step(model, collator, chunks[0], optimizer)  # warm-up (allocator, lazy inits)
    records = []
    profiler = cProfile.Profile()
    for chunk in chunks[1:]:
        profiler.enable()
        records.append(_timed_step(model, collator, chunk, optimizer))
        profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(15)
    median = {phase: statistics.median(r[phase] for r in records) for phase in PHASES}
    step_total = [sum(r[p] for p in PHASES) for r in records]
    return {
        "steps_timed": len(records), "documents_per_step": 2,
        "median_seconds": {**{k: round(v, 4) for k, v in median.items()}, "step": round(statistics.median(step_total), 4),
                           "step_cpu": round(statistics.median(r["cpu"] for r in records), 4)},
        "share_of_step": {k: round(v / sum(median.values()), 3) for k, v in median.items()},
        "mean_windows_per_step": statistics.mean(r["windows"] for r in records),
        "padded_tokens_per_step": statistics.mean(r["padded_tokens"] for r in records),
        "real_tokens_per_step": statistics.mean(r["real_tokens"] for r in records),
        "cprofile_top_tottime": _trim_profile(stream.getvalue()),
    }


def _trim_profile(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return [line.replace(str(PROJECT_ROOT) + "/", "").replace(sys.prefix, "<venv>") for line in lines[start : start + 16]]


def time_epoch(args, documents) -> dict:
    from xformparser.training import TrainingOptions, train_parser

    output_dir = Path(args.runs_dir) / f"speed_epoch_{args.label}"
    options = TrainingOptions(train_path="funsd/training_data", output_dir=str(output_dir), backbone="minilm-l6",
                              epochs=1.0, batch_size=2, show_progress=False, logging_steps=1000,
                              model_options={"frozen_layers": 0})
    started = time.time()
    summary = train_parser(options, train_documents=documents)
    return {"wall_seconds_incl_setup": round(time.time() - started, 1),
            "train_runtime_seconds": summary.get("train_runtime_seconds"),
            "train_cpu_seconds": summary.get("train_cpu_seconds"),
            "steps": summary["global_steps"], "documents": len(documents)}


def render(payload: dict) -> str:
    lines = ["# xformparser training speed (minilm-l6, whole encoder trainable, FUNSD train)", "",
             f"Machine: {payload['machine']}", "",
             "Median seconds per optimizer step of 2 forms, by phase (the same fixed FUNSD batches for every label; "
             "cProfile was on while timing, which adds a little overhead to Python-heavy phases).", "",
             "| label | code | step (wall) | step (CPU) | " + " | ".join(PHASES) + " | windows/step | padded tokens/step | real tokens/step | epoch (s) | load avg |",
             "|---|---|---|---|" + "---|" * len(PHASES) + "---|---|---|---|---|"]
    for label, run in payload["runs"].items():
        median = run["profile"]["median_seconds"]
        epoch = run.get("epoch") or {}
        lines.append(
            f"| {label} | {run['code']} | {median['step']:.2f} | {median.get('step_cpu', float('nan')):.2f} | " + " | ".join(f"{median[p]:.3f}" for p in PHASES)
            + f" | {run['profile']['mean_windows_per_step']:.1f} | {run['profile']['padded_tokens_per_step']:.0f} | "
              f"{run['profile']['real_tokens_per_step']:.0f} | {epoch.get('train_runtime_seconds', '-')} | {run['load_average']} |")
    lines += ["", "Epoch = one pass over the 149 FUNSD training forms through `train_parser` (the `xformparser train` "
              "entry point), batch 2, no evaluation; `train_runtime_seconds` is the Trainer's own train loop time.", ""]
    for label, run in payload["runs"].items():
        lines += [f"## {label}: command", "", f"`{run['command']}`", "", "cProfile, top functions by own time:", "",
                  "```", *run["profile"]["cprofile_top_tottime"], "```", ""]
    if payload.get("notes"):
        lines += ["## Notes", "", *[f"- {note}" for note in payload["notes"]], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", str(PROJECT_ROOT.parent / "shared/datasets")))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="after")
    parser.add_argument("--code", default="working tree", help="what code this is (e.g. a commit)")
    parser.add_argument("--epoch", action="store_true", help="also time one epoch through train_parser")
    parser.add_argument("--runs-dir", default="runs/xformparser_speed")
    parser.add_argument("--results-dir", default=str(PROJECT_ROOT / "docs/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_dir = Path(args.data_root) / "funsd/training_data"
    if not train_dir.exists():
        print(f"error: {train_dir} not found (set --data-root or SFTKIT_DATA_ROOT)", file=sys.stderr)
        return 2
    documents = load_documents(str(train_dir))
    backbone_path = resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(backbone_path)
    run = {"code": args.code, "xformparser_path": str(Path(xformparser.__file__).parent),
           "command": "python " + " ".join(shlex.quote(a) for a in [Path(__file__).relative_to(PROJECT_ROOT).as_posix(), *(argv or sys.argv[1:])]),
           "threads": args.threads, "load_average": " / ".join(f"{v:.1f}" for v in os.getloadavg())}
    run["profile"] = profile_steps(args, documents, tokenizer, backbone_path)
    print(json.dumps(run["profile"]["median_seconds"]), file=sys.stderr)
    if args.epoch:
        run["epoch"] = time_epoch(args, documents)
        print(json.dumps(run["epoch"]), file=sys.stderr)
    results_dir = Path(args.results_dir)
    json_path = results_dir / "xformparser_speed.json"
    payload = json.loads(json_path.read_text()) if json_path.exists() else {"runs": {}}
    payload["machine"] = (f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs, torch threads="
                          f"{args.threads}, torch {torch.__version__}")
    payload["runs"][args.label] = run
    if args.epoch and args.label == "after":
        payload["summary"] = {"epoch_seconds": run["epoch"]["train_runtime_seconds"],
                              "epoch_cpu_seconds": run["epoch"]["train_cpu_seconds"],
                              "documents": run["epoch"]["documents"], "load_average": run["load_average"]}
    atomic_write_json(json_path, payload)
    atomic_write_text(results_dir / "xformparser_speed.md", render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
