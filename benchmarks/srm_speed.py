"""Scoring speed of the SRM: throughput against a scalar reward model on the same backbone, and latency against a
generative judge, on the same preference pairs, in one process.

    .venv/bin/python benchmarks/srm_speed.py [--data-root ../shared/datasets] [--srm-model DIR] [--pairs 16]
        [--rounds 5] [--judge-pairs 8] [--judge-rounds 3] [--threads 1]

* **throughput ratio** (target >= 0.9): the SRM (``--srm-model``, default: the SRM shipped in
  ``srm/default_model``) and a scalar reward model with the same backbone (``minilm-l6``) and the same token
  window are each written to a folder and loaded the way ``srm score`` loads a model
  (:func:`srm.scoring.load_scorer` -> ``SRMScorer.from_pretrained``), with no feature cache, so every round
  recomputes every branch. Each round scores the same ``2 x --pairs`` responses with both models, in
  alternating order; the ratio of a round is ``time(scalar) / time(SRM)`` (SRM throughput relative to the
  scalar model's) and the headline is the median over rounds.
* **judge speedup** (goal >= 20x): ``smollm2-135m`` is asked which of two responses is better and writes its
  verdict (greedy, up to ``--judge-new-tokens`` tokens, batched, left-padded); the SRM scores both responses of
  the same pairs. Speedup of a round = ``time(judge) / time(SRM)``; median over rounds. The judge's verdict
  accuracy on these few pairs is printed as context only (tiny sample).

Pairs: the test part of ``splits/preference-split.json``: RM-Bench (detailed chosen vs detailed rejected) and
IFBench, interleaved, first ``--pairs``. Timings cover the scoring call only (models loaded, one untimed warm-up
call each), as wall-clock seconds (the headline) and as process CPU seconds (robust to other jobs on a shared
CPU). Writes docs/results/srm_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sft_core.atomic_io import atomic_write_text  # noqa: E402
from sft_core.hub import load_causal_lm, load_tokenizer  # noqa: E402
from srm import SRMModel  # noqa: E402
from srm.collate import tokenize_joint, tokenize_prompts  # noqa: E402
from srm.data import load_groups, select_split  # noqa: E402
from srm.scoring import load_scorer  # noqa: E402
from srm.trainer import save_srm  # noqa: E402

BACKBONE = "minilm-l6"
JUDGE = "smollm2-135m"
RMBENCH_FILES = [f"rm-bench/{d}_filtered.json" for d in ("chat", "code", "safety-refuse", "safety-response")]
IFBENCH_FILE = "ifbench/data.converted.json"
# Used only when no trained SRM is available: the dimension set of benchmarks/srm_quality.py (weights do not
# change the cost of a forward pass, the architecture does).
FALLBACK_DIMENSIONS = ["correctness", "instruction_following", "safety", "style:style", "relevance:similarity"]
JUDGE_SYSTEM = "You are a strict judge of answers to user requests."
JUDGE_TEMPLATE = ("Request:\n{prompt}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\n"
                  "Which response is better? Start your answer with 'A' or 'B', then give one short reason.")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", os.path.join(ROOT, "..", "shared",
                                                                                                 "datasets")))
    parser.add_argument("--srm-model", default=None, help="saved SRM directory (default: the shipped default SRM)")
    parser.add_argument("--pairs", type=int, default=16, help="preference pairs per throughput round")
    parser.add_argument("--rounds", type=int, default=6,
                        help="paired rounds; keep it even so each model runs first equally often (on a busy CPU "
                             "the first call of a round is measurably slower)")
    parser.add_argument("--batch-size", type=int, default=16, help="scoring batch size (srm score's default)")
    parser.add_argument("--judge-pairs", type=int, default=8)
    parser.add_argument("--judge-rounds", type=int, default=3)
    parser.add_argument("--judge-batch-size", type=int, default=8)
    parser.add_argument("--judge-new-tokens", type=int, default=24)
    parser.add_argument("--judge-prompt-tokens", type=int, default=None,
                        help="the judge sees at most this many prompt tokens (default: the SRM's max_prompt_length)")
    parser.add_argument("--judge-response-tokens", type=int, default=None,
                        help="... and this many tokens of each response (default: the SRM's joint window minus "
                             "its prompt share), so both judges read about the same text")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "docs", "results"))
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------
def load_pairs(data_root: str, limit: int) -> list[tuple[str, str, str]]:
    """``(prompt, chosen, rejected)`` from the test part of the canonical split, RM-Bench and IFBench interleaved."""
    groups, _ = load_groups([os.path.join(data_root, f) for f in RMBENCH_FILES + [IFBENCH_FILE]],
                            data_root=data_root)
    with open(os.path.join(data_root, "splits", "preference-split.json"), encoding="utf-8") as handle:
        test = select_split(groups, json.load(handle), "test")
    rmbench = [(g.prompt, g.responses[1], g.responses[4]) for g in test if g.rmbench]  # detailed vs detailed
    ifbench = [(g.prompt, g.responses[g.pairs[0].better], g.responses[g.pairs[0].worse])
               for g in test if not g.rmbench and g.pairs]
    interleaved = [pair for both in zip(rmbench, ifbench) for pair in both]
    if len(interleaved) < limit:
        raise SystemExit(f"only {len(interleaved)} test pairs available, asked for {limit}")
    return interleaved[:limit]


def prepare_models(args, workdir: str) -> tuple[str | None, str, str]:
    """(SRM directory or None for the shipped default, scalar directory, description of the SRM)."""
    if args.srm_model:
        srm_dir, description = args.srm_model, f"trained SRM from {args.srm_model}"
    else:
        from srm.defaults import DEFAULT_MODEL_DIR, DefaultModelMissingError, default_model_dir

        try:
            default_model_dir()
            srm_dir, description = None, f"the shipped default SRM ({os.path.relpath(DEFAULT_MODEL_DIR, ROOT)})"
        except DefaultModelMissingError:
            model = SRMModel.from_backbone(BACKBONE, dimensions=FALLBACK_DIMENSIONS)
            srm_dir = os.path.join(workdir, "srm")
            save_srm(model, load_tokenizer(BACKBONE), srm_dir)
            description = (f"a fresh (untrained) SRM with the dimensions {FALLBACK_DIMENSIONS} (no default model "
                           "was shipped yet; weights do not change the cost)")
    srm_config = load_scorer(srm_dir).model.config
    scalar = SRMModel.from_backbone(BACKBONE, scalar_baseline=True, max_sequence_length=srm_config.max_sequence_length,
                                    max_prompt_length=srm_config.max_prompt_length)
    scalar_dir = os.path.join(workdir, "scalar")
    save_srm(scalar, load_tokenizer(BACKBONE), scalar_dir)
    return srm_dir, scalar_dir, description


def timed(function, *args):
    """(wall seconds, process CPU seconds, result). On a shared CPU the wall clock also counts time spent waiting
    for a core; the process CPU time counts only the work done, so both are recorded."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


# ---------------------------------------------------------------------------------------------------------
class GenerativeJudge:
    """smollm2-135m writes a verdict on (prompt, A, B); the first 'A' / 'B' of the text is the decision."""

    def __init__(self, name: str, prompt_tokens: int, response_tokens: int, new_tokens: int, batch_size: int):
        self.tokenizer = load_tokenizer(name)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = load_causal_lm(name).eval()
        self.prompt_tokens, self.response_tokens = prompt_tokens, response_tokens
        self.new_tokens, self.batch_size = new_tokens, batch_size

    def _cut(self, text: str, limit: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= limit else self.tokenizer.decode(ids[:limit]) + " ..."

    def _prompt(self, prompt: str, a: str, b: str) -> str:
        text = JUDGE_TEMPLATE.format(prompt=self._cut(prompt, self.prompt_tokens), a=self._cut(a, self.response_tokens),
                                     b=self._cut(b, self.response_tokens))
        messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": text}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @torch.inference_mode()
    def verdicts(self, triples: list[tuple[str, str, str]]) -> list[str]:
        """Generated verdict texts for ``(prompt, A, B)`` triples (tokenization and truncation included)."""
        texts = []
        for start in range(0, len(triples), self.batch_size):
            batch = [self._prompt(*t) for t in triples[start:start + self.batch_size]]
            encoded = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            output = self.model.generate(**encoded, max_new_tokens=self.new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id)
            texts.extend(self.tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True))
        return texts


def non_embedding_parameters(model) -> int:
    """Parameters a token's forward pass multiplies with (token / position embeddings are lookups)."""
    return sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)


def compute_estimate(srm_scorer, judge, srm_items, triples, verdict_texts) -> dict:
    """Rough forward cost of one judge round: 2 x non-embedding parameters x tokens processed (attention's
    quadratic term and the LM head left out), to explain the measured speedup."""
    config = srm_scorer.model.config
    prompts, responses = [p for p, _ in srm_items], [r for _, r in srm_items]
    joint = int(tokenize_joint(srm_scorer.tokenizer, config, prompts, responses)["attention_mask"].sum())
    gate = int(tokenize_prompts(srm_scorer.tokenizer, config, list(dict.fromkeys(prompts)))["prompt_attention_mask"].sum())
    judge_input = sum(len(judge.tokenizer(judge._prompt(*t), add_special_tokens=False)["input_ids"]) for t in triples)
    judge_output = sum(len(judge.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in verdict_texts)
    srm_parameters = non_embedding_parameters(srm_scorer.model.backbone)
    judge_parameters = non_embedding_parameters(judge.model)
    srm_flops = 2 * srm_parameters * (joint + (0 if config.scalar_baseline else gate))
    judge_flops = 2 * judge_parameters * (judge_input + judge_output)
    return {"srm_encoder_non_embedding_parameters": srm_parameters, "srm_joint_tokens": joint,
            "srm_gate_prompt_tokens": gate, "judge_non_embedding_parameters": judge_parameters,
            "judge_input_tokens": judge_input, "judge_generated_tokens": judge_output,
            "estimated_compute_ratio": round(judge_flops / srm_flops, 1)}


def parse_verdict(text: str) -> str | None:
    match = re.search(r"\b([AB])\b", text)
    return match.group(1) if match else None


def judge_triples(pairs):
    """Alternate the chosen answer between positions A and B (against position bias); returns triples and the
    letter of the chosen answer in each."""
    triples, chosen_letters = [], []
    for index, (prompt, chosen, rejected) in enumerate(pairs):
        if index % 2 == 0:
            triples.append((prompt, chosen, rejected))
            chosen_letters.append("A")
        else:
            triples.append((prompt, rejected, chosen))
            chosen_letters.append("B")
    return triples, chosen_letters


# ---------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.time()
    pairs = load_pairs(args.data_root, max(args.pairs, args.judge_pairs))
    items = [(p, r) for p, c, j in pairs[: args.pairs] for r in (c, j)]
    with tempfile.TemporaryDirectory(prefix="srm-speed-") as workdir:
        srm_dir, scalar_dir, srm_description = prepare_models(args, workdir)
        srm_scorer = load_scorer(srm_dir, batch_size=args.batch_size, device="cpu")
        scalar_scorer = load_scorer(scalar_dir, batch_size=args.batch_size, device="cpu")
        config = srm_scorer.model.config
        print(f"SRM: {srm_description}; dimensions {config.dimension_names}, feature branches "
              f"{config.used_feature_branches}, window {config.max_sequence_length} tokens", file=sys.stderr)
        for scorer in (srm_scorer, scalar_scorer):  # warm-up: first-call allocations, lazy branch loading
            scorer.score(items[: args.batch_size])

        rounds = []
        for index in range(args.rounds):
            order = [("srm", srm_scorer), ("scalar", scalar_scorer)]
            if index % 2:
                order.reverse()
            seconds = {name: timed(scorer.score, items)[:2] for name, scorer in order}
            (srm_wall, srm_cpu), (scalar_wall, scalar_cpu) = seconds["srm"], seconds["scalar"]
            rounds.append({"order": [name for name, _ in order], "srm_s": srm_wall, "scalar_s": scalar_wall,
                           "ratio": scalar_wall / srm_wall, "srm_cpu_s": srm_cpu, "scalar_cpu_s": scalar_cpu,
                           "cpu_ratio": scalar_cpu / srm_cpu})
            print(f"round {index + 1}/{args.rounds}: srm {srm_wall:.2f}s scalar {scalar_wall:.2f}s ratio "
                  f"{rounds[-1]['ratio']:.3f} (CPU time ratio {rounds[-1]['cpu_ratio']:.3f})", file=sys.stderr)

        prompt_tokens = args.judge_prompt_tokens or config.max_prompt_length
        response_tokens = args.judge_response_tokens or (config.max_sequence_length - config.max_prompt_length)
        judge = GenerativeJudge(JUDGE, prompt_tokens, response_tokens, args.judge_new_tokens, args.judge_batch_size)
        judge_pairs = pairs[: args.judge_pairs]
        triples, chosen_letters = judge_triples(judge_pairs)
        srm_items = [(p, r) for p, c, j in judge_pairs for r in (c, j)]
        judge.verdicts(triples[:1])  # warm-up
        judge_rounds, verdict_texts, srm_results = [], [], None
        for index in range(args.judge_rounds):
            srm_seconds, srm_cpu, srm_results = timed(srm_scorer.score, srm_items)
            judge_seconds, judge_cpu, verdict_texts = timed(judge.verdicts, triples)
            judge_rounds.append({"srm_s": srm_seconds, "judge_s": judge_seconds, "speedup": judge_seconds / srm_seconds,
                                 "srm_cpu_s": srm_cpu, "judge_cpu_s": judge_cpu, "cpu_speedup": judge_cpu / srm_cpu})
            print(f"judge round {index + 1}/{args.judge_rounds}: srm {srm_seconds:.2f}s judge {judge_seconds:.2f}s "
                  f"speedup {judge_rounds[-1]['speedup']:.1f}x", file=sys.stderr)

        compute = compute_estimate(srm_scorer, judge, srm_items, triples, verdict_texts)
    verdicts = [parse_verdict(text) for text in verdict_texts]
    judge_correct = sum(v == c for v, c in zip(verdicts, chosen_letters))
    srm_correct = sum(srm_results[2 * i].reward > srm_results[2 * i + 1].reward for i in range(len(judge_pairs)))
    ratios = [r["ratio"] for r in rounds]
    speedups = [r["speedup"] for r in judge_rounds]
    cpu_ratios = [r["cpu_ratio"] for r in rounds]
    cpu_speedups = [r["cpu_speedup"] for r in judge_rounds]
    srm_median = statistics.median(r["srm_s"] for r in rounds)
    scalar_median = statistics.median(r["scalar_s"] for r in rounds)
    judge_srm_median = statistics.median(r["srm_s"] for r in judge_rounds)
    judge_median = statistics.median(r["judge_s"] for r in judge_rounds)
    summary = {
        "throughput_ratio": round(statistics.median(ratios), 3),
        "throughput_ratio_min": round(min(ratios), 3), "throughput_ratio_max": round(max(ratios), 3),
        "throughput_ratio_cpu_time": round(statistics.median(cpu_ratios), 3),
        "srm_items_per_s": round(len(items) / srm_median, 2), "scalar_items_per_s": round(len(items) / scalar_median, 2),
        "judge_speedup": round(statistics.median(speedups), 1),
        "judge_speedup_min": round(min(speedups), 1), "judge_speedup_max": round(max(speedups), 1),
        "judge_speedup_cpu_time": round(statistics.median(cpu_speedups), 1),
        "srm_s_per_pair": round(judge_srm_median / len(judge_pairs), 4),
        "judge_s_per_pair": round(judge_median / len(judge_pairs), 3),
        "target_throughput_ratio": 0.9, "goal_judge_speedup": 20,
    }
    report = {
        "summary": summary,
        "command": "python benchmarks/srm_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "srm_model": srm_description,
        "srm_config": {"dimensions": config.dimension_names, "feature_branches": config.used_feature_branches,
                       "max_sequence_length": config.max_sequence_length,
                       "max_prompt_length": config.max_prompt_length},
        "scalar_model": f"scalar baseline on {BACKBONE}, same token window, loaded from a saved folder",
        "workload": {"pairs": args.pairs, "responses_per_round": len(items), "rounds": args.rounds,
                     "batch_size": args.batch_size, "judge_pairs": len(judge_pairs), "judge_rounds": args.judge_rounds,
                     "judge_batch_size": args.judge_batch_size, "judge_new_tokens": args.judge_new_tokens,
                     "judge_prompt_tokens": prompt_tokens, "judge_response_tokens": response_tokens,
                     "threads": args.threads,
                     "data": "test part of splits/preference-split.json (RM-Bench detailed vs detailed, IFBench)"},
        "rounds": rounds, "judge_rounds": judge_rounds, "judge_compute_estimate": compute,
        "judge_context": {"verdicts": verdict_texts, "parsed": sum(v is not None for v in verdicts),
                          "judge_correct": judge_correct, "srm_correct": srm_correct, "pairs": len(judge_pairs)},
        "total_seconds": round(time.time() - started, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, "
                   f"{args.threads} torch thread(s), torch {torch.__version__}, Python {platform.python_version()}",
    }
    os.makedirs(args.output_dir, exist_ok=True)
    atomic_write_text(os.path.join(args.output_dir, "srm_speed.json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(os.path.join(args.output_dir, "srm_speed.md"), markdown(report))
    print(json.dumps(summary, indent=2))
    return 0


def markdown(report: dict) -> str:
    s, w = report["summary"], report["workload"]
    context = report["judge_context"]
    lines = [
        "# SRM scoring speed", "",
        f"Command: `{report['command'].strip()}`", "",
        f"SRM: {report['srm_model']}; dimensions {', '.join(report['srm_config']['dimensions'])}; feature branches "
        f"{', '.join(report['srm_config']['feature_branches']) or 'none'}; window "
        f"{report['srm_config']['max_sequence_length']} tokens. Scalar: {report['scalar_model']}. Both are loaded "
        "from their folders the way `srm score` loads a model, in one process, no feature cache.", "",
        f"Workload: {w['responses_per_round']} responses ({w['pairs']} test pairs: {w['data']}), batch size "
        f"{w['batch_size']}, {w['rounds']} paired rounds in alternating order. Judge: `{JUDGE}` writes a verdict "
        f"(greedy, up to {w['judge_new_tokens']} new tokens; it reads at most {w['judge_prompt_tokens']} prompt "
        f"tokens and {w['judge_response_tokens']} tokens of each response, about what the SRM's window holds; batch "
        f"{w['judge_batch_size']}) on {w['judge_pairs']} pairs, "
        f"{w['judge_rounds']} rounds, each paired with the SRM scoring both responses of the same pairs.", "",
        f"Machine: {report['machine']}. Absolute seconds are noisy on a shared CPU; the per-round ratios much less so.",
        "",
        "| measure (wall clock) | median | min | max | median on process CPU time | target |",
        "|---|---|---|---|---|---|",
        f"| SRM throughput / scalar throughput (same backbone) | {s['throughput_ratio']:.3f} | "
        f"{s['throughput_ratio_min']:.3f} | {s['throughput_ratio_max']:.3f} | {s['throughput_ratio_cpu_time']:.3f} | "
        f">= {s['target_throughput_ratio']} |",
        f"| judge time / SRM time, same pairs | {s['judge_speedup']:.1f}x | {s['judge_speedup_min']:.1f}x | "
        f"{s['judge_speedup_max']:.1f}x | {s['judge_speedup_cpu_time']:.1f}x | >= {s['goal_judge_speedup']}x |",
        "",
        "Process CPU time counts only the work each model does (one torch thread); the wall clock also counts "
        "time spent waiting for a core on this shared machine.",
        "",
        "Throughput rounds (medians): scalar RM "
        f"{s['scalar_items_per_s']:.2f} responses/s, SRM {s['srm_items_per_s']:.2f} responses/s. Judge rounds "
        f"(medians, same pairs): SRM {s['srm_s_per_pair']:.3f} s per pair (both responses scored), generative "
        f"judge ({JUDGE}) {s['judge_s_per_pair']:.3f} s per pair.",
        "",
        "Rounds (seconds):", "",
        "| round | order | SRM | scalar | ratio | SRM CPU | scalar CPU | CPU ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, r in enumerate(report["rounds"], start=1):
        lines.append(f"| {index} | {' then '.join(r['order'])} | {r['srm_s']:.2f} | {r['scalar_s']:.2f} | "
                     f"{r['ratio']:.3f} | {r['srm_cpu_s']:.2f} | {r['scalar_cpu_s']:.2f} | {r['cpu_ratio']:.3f} |")
    lines += ["", "| judge round | SRM | judge | speedup | SRM CPU | judge CPU | CPU speedup |",
              "|---|---|---|---|---|---|---|"]
    for index, r in enumerate(report["judge_rounds"], start=1):
        lines.append(f"| {index} | {r['srm_s']:.2f} | {r['judge_s']:.2f} | {r['speedup']:.1f}x | "
                     f"{r['srm_cpu_s']:.2f} | {r['judge_cpu_s']:.2f} | {r['cpu_speedup']:.1f}x |")
    c = report["judge_compute_estimate"]
    lines += ["", f"Why this speedup: in one judge round the SRM runs {c['srm_joint_tokens']} joint tokens and "
                  f"{c['srm_gate_prompt_tokens']} prompt tokens (gate) through an encoder with "
                  f"{c['srm_encoder_non_embedding_parameters'] / 1e6:.1f}M non-embedding parameters; the judge reads "
                  f"{c['judge_input_tokens']} tokens and writes {c['judge_generated_tokens']} with "
                  f"{c['judge_non_embedding_parameters'] / 1e6:.1f}M. At 2 x parameters x tokens that is "
                  f"{c['estimated_compute_ratio']}x more compute for the judge (a rough estimate: attention and the "
                  "LM head left out; generating is slower per token than reading), so the measured speedup tracks "
                  "compute, not overhead."]
    lines += ["", f"Context only ({context['pairs']} pairs, far too few to compare quality): the judge's verdict "
                  f"named a response in {context['parsed']} cases and picked the labelled-better one in "
                  f"{context['judge_correct']}; the SRM ranked the labelled-better one higher in "
                  f"{context['srm_correct']}. Quality is measured in [srm_quality.md](srm_quality.md).",
              "", f"Total run time: {report['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
