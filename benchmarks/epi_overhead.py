"""EPI overhead: step time and memory of `static` and `epi` relative to `full`, same model, data and run.

    python benchmarks/epi_overhead.py --model smollm2-135m --rounds 8

A. Paired rounds: every round runs one optimizer step of full, static, epi and epi_k2 on the same batch (the
   tasks alternate, so the protection changes every step; the order of the methods rotates every round);
   per-round ratios variant/full, medians quoted.
   Shared-CPU load changes slowly, so pairing within a round cancels most of it. All parameters (all 30
   blocks of smollm2-135m, embeddings included) are trainable. Every round also times one mask refresh
   of epi (both tasks re-rank, as at the default cadence in a mixed schedule), amortised over the
   default update_interval (50 steps): the "with refreshes" ratio is the median over rounds of
   (epi step + refresh / 50) / full step, paired like the others.
B. Isolator-only costs on the model's real gradients (CPU time, less sensitive to other jobs): importance
   EMA dtype (bf16 / fp32 / fp16), importance every k steps, isolation implementation (index
   snapshot/restore vs full copy + torch.where), and one mask refresh.
C. Memory: exact bytes of EPI state per parameter and task; peak RSS of each method in its own
   subprocess (`--rss`), divided by full's.
Writes docs/results/epi_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sft_core.epi import EPIConfig, attach_epi  # noqa: E402
from sft_core.atomic_io import atomic_write_text  # noqa: E402

TASKS = ("task_a", "task_b")


def epi_config(args, method, **overrides):
    values = dict(method=method, isolation_ratio=args.ratio, warmup_steps=2, update_interval=10_000,
                  probe_steps=1, replay_batches=0)
    values.update(overrides)
    return EPIConfig(**values)


def load_model(name):
    from sft_core.hub import load_causal_lm

    model = load_causal_lm(name)
    model.train()
    return model


def make_batch(model, args, seed):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len), generator=generator)
    return {"input_ids": ids, "labels": ids}


def timed_step(model, optimizer, isolator, batch, task):
    """Wall seconds per phase, plus the process CPU seconds of the whole step ("cpu_total"): with one
    thread, CPU time leaves out the time the process waited for a core held by other jobs."""
    start, start_cpu = time.perf_counter(), time.process_time()
    model(**batch).loss.backward()
    t_backward = time.perf_counter()
    isolator.before_step(task)
    t_before = time.perf_counter()
    optimizer.step()
    t_optimizer = time.perf_counter()
    isolator.after_step(task)
    t_after = time.perf_counter()
    cpu = time.process_time() - start_cpu
    optimizer.zero_grad(set_to_none=True)
    return {"forward_backward": t_backward - start, "before_step": t_before - t_backward,
            "optimizer": t_optimizer - t_before, "after_step": t_after - t_optimizer, "total": t_after - start,
            "cpu_total": cpu}


def paired_rounds(args, model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    isolators = {label: attach_epi(model, optimizer, epi_config(args, method, **overrides))
                 for label, (method, overrides) in PAIRED_METHODS.items()}
    # prime: every task takes warm-up steps so static (probe 1) and epi (refresh at step 2) have masks
    for task_index, task in enumerate(TASKS):
        for method, isolator in isolators.items():
            timed_step(model, optimizer, isolator, make_batch(model, args, 1000 + task_index), task)
    rows = []
    for round_index in range(args.rounds):
        task = TASKS[round_index % len(TASKS)]
        batch = make_batch(model, args, 10 * round_index + TASKS.index(task))  # tasks see different data
        row = {"round": round_index, "task": task}
        labels = list(isolators)
        order = labels[round_index % len(labels):] + labels[:round_index % len(labels)]  # no fixed position
        for method in order:
            row[method] = timed_step(model, optimizer, isolators[method], batch, task)
        row = {"round": round_index, "task": task, "order": order, **{m: row[m] for m in labels}}
        row["refresh"] = timed_refresh(isolators["epi"])
        rows.append(row)
        print(f"round {round_index}: " + ", ".join(f"{m} {row[m]['total']:.2f}s" for m in isolators)
              + f", refresh {row['refresh']['wall']:.2f}s", flush=True)
    summary = {}
    for method in isolators:
        totals = [row[method]["total"] for row in rows]
        is_epi = PAIRED_METHODS[method][0] == "epi"  # every epi variant pays the same refreshes
        refresh_share = [row["refresh"]["wall"] / DEFAULT_INTERVAL if is_epi else 0.0 for row in rows]
        summary[method] = {
            "median_step_s": statistics.median(totals),
            "median_ratio_to_full": statistics.median(row[method]["total"] / row["full"]["total"] for row in rows),
            # paired too: each round's step plus that round's refresh amortised over update_interval steps
            "ratio_with_refreshes": statistics.median((row[method]["total"] + share) / row["full"]["total"]
                                                      for row, share in zip(rows, refresh_share)),
            "median_phase_s": {phase: statistics.median(row[method][phase] for row in rows)
                               for phase in ("forward_backward", "before_step", "optimizer", "after_step")},
            "mean_ratio_to_full": statistics.fmean(row[method]["total"] / row["full"]["total"] for row in rows),
            "median_cpu_ratio_to_full": statistics.median(row[method]["cpu_total"] / row["full"]["cpu_total"]
                                                          for row in rows),
            "cpu_ratio_with_refreshes": statistics.median(
                (row[method]["cpu_total"] + (row["refresh"]["cpu"] / DEFAULT_INTERVAL if is_epi else 0.0))
                / row["full"]["cpu_total"] for row in rows),
            "refresh_s": statistics.median(row["refresh"]["wall"] for row in rows) if is_epi else 0.0,
            "refresh_cpu_s": statistics.median(row["refresh"]["cpu"] for row in rows) if is_epi else None,
        }
    nbytes = {method: isolator.state_nbytes() for method, isolator in isolators.items()}
    return rows, summary, nbytes, optimizer


DEFAULT_INTERVAL = EPIConfig().update_interval
# label -> (method, EPIConfig overrides). The importance interval is explicit so that the labels stay
# true whatever the default; epi_k2 updates a task's importance EMA on every 2nd of its steps (with 8
# rounds and 2 alternating tasks, on exactly half of its paired rounds).
PAIRED_METHODS = {"full": ("full", {}), "static": ("static", {}), "epi": ("epi", {"importance_interval": 1}),
                  "epi_k2": ("epi", {"importance_interval": 2})}


def timed_refresh(isolator):
    """One mask refresh of the epi isolator as at the default cadence in a mixed schedule: both tasks took
    steps since the previous refresh, so both re-rank (top-k, hysteresis, drift records, protection)."""
    for state in isolator.tasks.values():
        state.steps_since_refresh = max(1, state.steps_since_refresh)
    start, start_cpu = time.perf_counter(), time.process_time()
    isolator._refresh()
    for task in TASKS:
        isolator.protector.indices_for(task, isolator.tasks)
    return {"wall": time.perf_counter() - start, "cpu": time.process_time() - start_cpu}


def task_gradients(args, model):
    grads_by_task = {}
    for task_index, task in enumerate(TASKS):
        model.zero_grad(set_to_none=True)
        model(**make_batch(model, args, 12345 + task_index)).loss.backward()
        grads_by_task[task] = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads_by_task


def isolator_costs(args, model, optimizer):
    """CPU seconds of the isolator alone (no optimizer step) for implementation variants."""
    grads_by_task = task_gradients(args, model)
    variants = {
        "bf16 EMA, importance every step, index snapshot": dict(importance_interval=1),
        "bf16 EMA, importance every 2nd step": dict(importance_interval=2),
        "bf16 EMA, importance every 4th step": dict(importance_interval=4),
        "fp32 EMA": dict(importance_dtype="float32", importance_interval=1),
        "fp16 EMA (saturate + floor)": dict(importance_dtype="float16", importance_interval=1),
        "bf16 EMA, full copy + where": dict(isolation_impl="full_copy", importance_interval=1),
    }
    results = {}
    for label, overrides in variants.items():
        isolator = attach_epi(model, optimizer, epi_config(args, "epi", **overrides))
        for task in TASKS:  # build masks for both tasks (step 2 refreshes)
            for p, g in zip(model.parameters(), grads_by_task[task]):
                p.grad = g.clone()
            isolator.before_step(task)
            isolator.after_step(task)
        timings = {"importance": [], "protect": [], "restore": []}
        interval = isolator.config.importance_interval
        for rep in range(args.isolator_reps * interval):
            task = TASKS[rep % len(TASKS)]
            for p, g in zip(model.parameters(), grads_by_task[task]):
                p.grad = g.clone()
            state = isolator.register_task(task)
            state.steps += 1
            start = time.process_time()
            if (state.steps - 1) % interval == 0:
                isolator.accumulator.update(state.importance, isolator.params, [p.grad for p in isolator.params])
            t1 = time.process_time()
            isolator.protector.snapshot(task, isolator.tasks)
            t2 = time.process_time()
            isolator.protector.restore()
            t3 = time.process_time()
            timings["importance"].append(t1 - start)
            timings["protect"].append(t2 - t1)
            timings["restore"].append(t3 - t2)
        results[label] = {k: sum(v) / len(v) for k, v in timings.items()}  # mean: every k-th step pays
        results[label]["total"] = sum(results[label].values())
        print(f"{label}: " + ", ".join(f"{k} {v:.3f}s" for k, v in results[label].items()), flush=True)
        del isolator
    model.zero_grad(set_to_none=True)
    return results


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def rss_child(args):
    """Run in a subprocess: a few steps of one method; print the training-phase peak RSS as JSON.

    The process-lifetime peak (ru_maxrss) is reached while loading the model, identically for every
    method, so the training peak is sampled at the points where memory is highest: end of forward
    (activations), after backward (gradients), after before_step (snapshot) and after the optimizer step."""
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    isolator = attach_epi(model, optimizer, epi_config(args, args.rss_child))
    peak = 0
    for step in range(3):
        task = TASKS[step % 2]
        loss = model(**make_batch(model, args, 10 * step + step % 2)).loss
        peak = max(peak, current_rss_bytes())
        loss.backward()
        del loss
        peak = max(peak, current_rss_bytes())
        isolator.before_step(task)
        peak = max(peak, current_rss_bytes())
        optimizer.step()
        peak = max(peak, current_rss_bytes())
        isolator.after_step(task)
        optimizer.zero_grad(set_to_none=True)
    print(json.dumps({"method": args.rss_child, "training_peak_rss_bytes": peak,
                      "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def peak_rss(args):
    results = {}
    for method in ("full", "static", "epi"):
        command = [sys.executable, __file__, "--rss-child", method, "--model", args.model, "--batch-size",
                   str(args.batch_size), "--seq-len", str(args.seq_len), "--threads", str(args.threads),
                   "--ratio", str(args.ratio)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(output.strip().splitlines()[-1])["training_peak_rss_bytes"]
        print(f"training peak RSS {method}: {results[method] / 2**30:.2f} GiB", flush=True)
    return results


def write_report(args, out_dir, report):
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{args.report_name}.json", json.dumps(report, indent=2))
    s, n = report["paired"], report["n_parameters"]
    lines = [
        "# EPI overhead", "",
        f"Model `{report['model']}` ({n / 1e6:.1f}M trainable parameters), AdamW (weight decay 0.01), batch "
        f"{report['batch_size']} x {report['seq_len']} tokens, {len(TASKS)} tasks alternating every step, isolation "
        f"ratio {report['ratio']}, element granularity, {report['rounds']} paired rounds (+2 priming steps per method), "
        f"{args.threads} CPU threads.", "",
        f"Command: `{report['command']}`" + (f" (peak RSS re-measured with `{report['rss_command']}`)"
                                              if report.get("rss_command") else ""), "",
        f"Machine: {report['machine']}. The CPU was shared with other jobs: absolute seconds are noisy, the "
        "per-round paired ratios much less so. Wall-time ratios include waiting for a core when another job "
        "holds it; CPU-time ratios (process CPU seconds of the step, one thread) leave that out but still "
        "include memory-bandwidth contention.", "",
        "## Step time (medians)", "",
        "`epi` updates a task's importance EMA on every step (`importance_interval=1`), `epi_k2` on every 2nd "
        f"of its steps (`importance_interval=2`); both refresh masks the same way. The default is "
        f"`importance_interval={EPIConfig().importance_interval}`.", "",
        "| method | median step (s) | median paired ratio to full | mean paired ratio | ratio with refreshes "
        f"(every {DEFAULT_INTERVAL} steps, median) | CPU-time ratio | CPU-time ratio with refreshes "
        "| fwd+bwd (s) | before_step (s) | optimizer (s) | after_step (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, row in s.items():
        ph = row["median_phase_s"]
        lines.append(f"| {method} | {row['median_step_s']:.2f} | {row['median_ratio_to_full']:.3f} | "
                     f"{row.get('mean_ratio_to_full', float('nan')):.3f} | {row['ratio_with_refreshes']:.3f} | "
                     f"{row.get('median_cpu_ratio_to_full', float('nan')):.3f} | "
                     f"{row.get('cpu_ratio_with_refreshes', float('nan')):.3f} | "
                     f"{ph['forward_backward']:.2f} | {ph['before_step']:.3f} | {ph['optimizer']:.2f} | {ph['after_step']:.3f} |")
    rows = report["rounds_detail"]
    full_median = statistics.median(row["full"]["total"] for row in rows)
    refresh_median = statistics.median(row["refresh"]["wall"] for row in rows)
    lines += ["", "### Isolator time accounted per step", "",
              "The whole-step ratios above carry the noise of forward/backward and the optimizer (identical work for "
              "every method, yet their paired ratios scatter by +-10-30% per round on the shared CPU). The isolator's "
              "own time is measured directly inside every step (`before_step` + `after_step`), so a steadier ratio is "
              "1 + isolator seconds / full step, paired per round; the mean over rounds is the per-step average "
              f"(`epi_k2` pays the importance pass on half of its rounds); refreshes add the median refresh / "
              f"{DEFAULT_INTERVAL} over the median full step.", "",
              "| method | isolator s / step (mean) | 1 + isolator / full (mean over rounds) | with refreshes |",
              "|---|---|---|---|"]
    for method in s:
        if method == "full":
            continue
        isolator_s = [row[method]["before_step"] + row[method]["after_step"] for row in rows]
        share = statistics.fmean(i / row["full"]["total"] for i, row in zip(isolator_s, rows))
        refresh_share = refresh_median / DEFAULT_INTERVAL / full_median if method.startswith("epi") else 0.0
        lines.append(f"| {method} | {statistics.fmean(isolator_s):.3f} | {1 + share:.3f} | {1 + share + refresh_share:.3f} |")
    lines += ["", "Per-round ratios to full (round order): " + "; ".join(
        f"{method} " + ", ".join(f"{row[method]['total'] / row['full']['total']:.3f}" for row in rows)
        for method in s if method != "full") + "; epi with refresh " + ", ".join(
        f"{(row['epi']['total'] + row['refresh']['wall'] / DEFAULT_INTERVAL) / row['full']['total']:.3f}"
        for row in rows) + "."]
    refresh = s["epi"]["refresh_s"]
    refresh_cpu = s["epi"].get("refresh_cpu_s")
    lines += ["", f"One mask refresh (top-k of both tasks, hysteresis, drift stats, protection), timed in every round: "
              f"median {refresh:.2f} s wall" + (f" ({refresh_cpu:.2f} s CPU)" if refresh_cpu else "") + ", i.e. "
              f"{refresh / DEFAULT_INTERVAL:.3f} s per step amortised at the default update_interval="
              f"{DEFAULT_INTERVAL}; the 'with refreshes' column is the median over rounds of (epi step + that round's "
              f"refresh / {DEFAULT_INTERVAL}) / full step. Per-round values: `rounds_detail` in the JSON.", "",
              "## Where EPI time goes (isolator alone, real gradients, mean CPU seconds per step)", "",
              "| variant | importance EMA | snapshot + zero grads | restore | total |", "|---|---|---|---|---|"]
    for label, row in report["isolator_costs"].items():
        if "importance" in row:
            lines.append(f"| {label} | {row['importance']:.3f} | {row['protect']:.3f} | {row['restore']:.3f} | {row['total']:.3f} |")
    lines += ["", "## Memory", "", "Peak RSS = highest resident set sampled during 3 training steps (end of forward, after backward, "
              "after before_step, after the optimizer step) in a separate process per method; the process-lifetime "
              "peak is reached while loading the model and is the same for all methods.", "",
              "| method | EPI state bytes / parameter / task | training peak RSS (GiB) | peak RSS / full |",
              "|---|---|---|---|"]
    for method in ("full", "static", "epi"):
        per = report["state_bytes"][method]["persistent_total"] / n / len(TASKS)
        rss = report.get("peak_rss_bytes", {}).get(method)
        full_rss = report.get("peak_rss_bytes", {}).get("full")
        rss_cells = f"{rss / 2**30:.2f} | {rss / full_rss:.3f}" if rss and full_rss else "n/a | n/a"
        lines.append(f"| {method} | {per:.3f} | {rss_cells} |")
    epi_bytes = report["state_bytes"]["epi"]
    lines += ["", "EPI state breakdown (bytes, both tasks): " + ", ".join(
        f"{k} {v:,}" for k, v in epi_bytes.items()) + ".", "",
        "Budget from the issue: 4 bytes + 1 bit per task and parameter (4.125). Per-step transient memory "
        "(snapshot of protected values) is not included in the state bytes; it is in the peak RSS."]
    atomic_write_text(out_dir / f"{args.report_name}.md", "\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--isolator-reps", type=int, default=3)
    parser.add_argument("--no-rss", action="store_true", help="skip the per-method peak-RSS subprocesses")
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--report-name", default="epi_overhead", help="file stem of the JSON and markdown reports")
    parser.add_argument("--rss-only", action="store_true",
                        help="re-measure the peak RSS only and rewrite the report from the existing JSON")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        return rss_child(args)
    if args.rss_only:
        report = json.loads((Path(args.out_dir) / f"{args.report_name}.json").read_text())
        report["peak_rss_bytes"] = peak_rss(args)
        report["rss_command"] = "python benchmarks/epi_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_report(args, Path(args.out_dir), report)
        return None
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(args.model)
    rows, summary, nbytes, optimizer = paired_rounds(args, model)
    costs = isolator_costs(args, model, optimizer)
    del optimizer
    report = {
        "command": "python benchmarks/epi_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": args.model, "n_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "batch_size": args.batch_size, "seq_len": args.seq_len, "rounds": args.rounds, "ratio": args.ratio,
        "paired": summary, "rounds_detail": rows, "isolator_costs": costs, "state_bytes": nbytes,
    }
    del model
    if not args.no_rss:
        report["peak_rss_bytes"] = peak_rss(args)
    write_report(args, Path(args.out_dir), report)
    print((Path(args.out_dir) / f"{args.report_name}.md").read_text())


if __name__ == "__main__":
    main()
