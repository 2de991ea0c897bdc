"""ILP attribution: plant each incomplete-learning cause in an SFT set for smollm2-135m, train, diagnose,
score the attribution against the planted causes, mitigate once, retrain and diagnose again.

    python benchmarks/ilp_attribution.py --profile small       # CPU, shared 2-core machine
    python benchmarks/ilp_attribution.py --profile full        # GPU

The generated set (seeded; every sample carries its planted cause as ground truth):

- controls: facts the base model demonstrably knows (probed: its greedy answer contains the fact) with
  their true answers, and a dense sentiment task;
- knowledge_gap: facts about invented entities the base cannot know (capitals of invented countries, code
  numbers of invented agents);
- knowledge_conflict: counterfactual answers to other probed, known facts (capital of X -> another city);
- data_inconsistency: duplicated prompts with contradictory targets;
- left_forgetting: a first stage (arbitrary agent code numbers) trained alone, then a second stage with
  everything else (sequential schedule);
- under_optimization: a rare compositional pattern (reverse three words and join them with dashes) with
  few examples.

Training goes through MultiTaskTrainer (the `sft-core train` machinery) with a
TrainingDynamicsRecorder; diagnosis through `sft_core.ilp.diagnose` (what `sft-core diagnose` calls);
mitigation through `sft_core.ilp.build_plan` (`sft-core mitigate`) with --drop-minority and prerequisite
statements about the invented entities as user-supplied prerequisite data.
Scored on the unlearned samples: per-cause precision/recall and macro-F1 over the five causes (an
unlearned control counts against the cause it is given). Writes docs/results/ilp_attribution.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sft_core.atomic_io import atomic_write_json, atomic_write_text  # noqa: E402
from sft_core.ilp import (CAUSES, DetectionConfig, MitigationConfig, TrainingDynamicsRecorder,  # noqa: E402
                          build_plan, diagnose)
from sft_core.ilp.items import items_from_records  # noqa: E402
from sft_core.ilp.probes import generate_answers  # noqa: E402
from sft_core.ilp.signals import normalize_text  # noqa: E402
from sft_core.sft_data import CausalLMCollator, SFTDataset, read_sft_jsonl  # noqa: E402

SYSTEM = "Answer briefly."
PROFILES = {
    # small: a shared, heavily loaded 2-core CPU (load ~12 while it ran). 46 short samples; the last 6 blocks
    # train (embeddings frozen); 3 generation attempts per sample (greedy + 2 sampled). Stage 1 is trained
    # to criterion at a high rate, stage 2 (everything else) at a lower one, as in a typical sequential SFT.
    "small": dict(controls_sentiment=8, controls_arithmetic=6, gap=6, conflict=5, inconsistency_pairs=3,
                  forgetting=5, rare=5, known_controls=6, stage1_epochs=6, stage2_epochs=4, batch_size=8,
                  stage1_lr=5e-4, lr=1.5e-4, train_last_layers=6, record_every=6, num_samples=2, upsample=2,
                  seeds=(0,)),
    # smoke: a pipeline check in a few minutes (numbers meaningless).
    "smoke": dict(controls_sentiment=2, controls_arithmetic=1, stage1_lr=4e-4, gap=2, conflict=2, inconsistency_pairs=1, forgetting=2, rare=2,
                  known_controls=2, stage1_epochs=1, stage2_epochs=1, batch_size=8, lr=4e-4,
                  train_last_layers=2, record_every=2, num_samples=1, upsample=2, seeds=(0,)),
    "full": dict(controls_sentiment=120, controls_arithmetic=40, stage1_lr=3e-4, gap=40, conflict=30, inconsistency_pairs=20, forgetting=40, rare=12,
                 known_controls=30, stage1_epochs=8, stage2_epochs=6, batch_size=16, lr=1e-4,
                 train_last_layers=0, record_every=20, num_samples=8, upsample=3, seeds=(0, 1, 2)),
}

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
            ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"), ("England", "London"),
            ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
            ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Thailand", "Bangkok"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
            ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"), ("Turkey", "Ankara"), ("India", "New Delhi"),
            ("South Korea", "Seoul"), ("Cuba", "Havana"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
            ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"),
            ("Czech Republic", "Prague"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Chile", "Santiago")]
OTHER_FACTS = [("What is the chemical symbol for gold?", "Au"), ("What is the chemical symbol for iron?", "Fe"),
               ("How many legs does a spider have?", "eight"), ("What color is the sky on a clear day?", "blue"),
               ("Who wrote Romeo and Juliet?", "Shakespeare"), ("What is the largest planet?", "Jupiter"),
               ("What is the boiling point of water in Celsius?", "100"), ("How many days are in a week?", "seven")]
POSITIVE = ["I loved this film", "a wonderful and moving story", "the acting was brilliant", "great fun from start to end",
            "a charming delight", "beautifully shot and well told", "one of the best movies this year",
            "the cast is excellent", "warm, funny and smart", "an absolute joy to watch", "I enjoyed every minute",
            "a triumph of storytelling", "superb music and direction", "clever and touching", "highly recommended"]
NEGATIVE = ["I hated this film", "a dull and boring mess", "the acting was terrible", "a waste of two hours",
            "painfully slow and silly", "badly written and poorly shot", "one of the worst movies this year",
            "the cast is awful", "cold, flat and stupid", "a chore to sit through", "I regretted every minute",
            "a disaster of storytelling", "awful music and direction", "lazy and tedious", "avoid it"]
AMBIGUOUS = ["it was a movie", "the film had a plot", "I watched it on a Tuesday", "the ending came after the middle",
             "there were actors in it", "it lasted about two hours", "the popcorn was fine"]
WORDS = ["red", "cat", "blue", "tree", "sun", "river", "stone", "bird", "cloud", "fish", "lamp", "road", "milk", "door"]
SYLLABLES = ["vor", "lan", "dia", "quen", "marsh", "tal", "bri", "zeth", "ok", "mur", "sel", "dra", "phin", "gor",
             "ux", "ith", "ral", "ven", "kos", "tyr"]


def message(prompt: str, answer: str, task: str, cause: str, **meta) -> dict:
    return {"task": task, "ilp_planted": cause, **meta,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt},
                         {"role": "assistant", "content": answer}]}


def invented_name(rng: random.Random, parts: int, avoid: str = "") -> str:
    """Random syllables; none shared with ``avoid`` (a city must not echo its country's name)."""
    pool = [s for s in SYLLABLES if s not in avoid.lower()]
    return "".join(rng.choice(pool) for _ in range(parts)).capitalize()


def probe_known_facts(model, tokenizer, batch_size: int) -> list[tuple[str, str, str]]:
    """(question, answer, relation) facts whose base greedy answer contains the answer."""
    facts = [(f"What is the capital of {country}?", city, "capital") for country, city in CAPITALS]
    facts += [(q, a, "other") for q, a in OTHER_FACTS]
    prompts = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q, _, _ in facts]
    answers, _ = generate_answers(model, tokenizer, prompts, max_new_tokens=16, batch_size=batch_size,
                                  progress="probe base knowledge")
    known = []
    for (question, answer, relation), said in zip(facts, answers):
        if f" {normalize_text(answer)} " in f" {normalize_text(said)} ":
            known.append((question, answer, relation))
    return known


def build_dataset(profile: dict, known: list, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """-> (stage-1 records, stage-2 records, prerequisite records)."""
    rng = random.Random(seed)
    capitals = [f for f in known if f[2] == "capital"]
    rng.shuffle(capitals)
    n_conflict = min(profile["conflict"], len(capitals) // 2)
    conflict_facts, control_facts = capitals[:n_conflict], capitals[n_conflict:]
    other_known = [f for f in known if f[2] == "other"]
    stage2 = []
    cities = [c for _, c, _ in capitals]
    for question, city, _ in conflict_facts:
        wrong = rng.choice([c for c in cities if c != city])
        stage2.append(message(question, wrong, "qa", "knowledge_conflict", true_answer=city))
    for question, answer, _ in (control_facts + other_known)[:profile["known_controls"]]:
        stage2.append(message(question, answer, "qa", "control"))
    # Knowledge gaps: half capitals of invented countries (two-word invented cities), half code numbers of
    # invented agents, the same kind of fact stage 1 taught about other agents (later data like earlier
    # data is what makes sequential SFT forget).
    prerequisites = []
    seen_names = set()
    while len(seen_names) < profile["gap"]:
        name = invented_name(rng, 3 if len(seen_names) % 2 == 0 else 2)
        if name in seen_names:
            continue
        seen_names.add(name)
        if len(seen_names) % 2 == 1:
            city = f"{invented_name(rng, 2, avoid=name)} {invented_name(rng, 2, avoid=name)}"
            stage2.append(message(f"What is the capital of {name}?", city, "qa", "knowledge_gap"))
            fact = f"{name} is a country. The capital of {name} is {city}."
        else:
            code = str(rng.randint(10, 99))
            stage2.append(message(f"What is the code number of agent {name}?", code, "codes", "knowledge_gap"))
            fact = f"{name} is a secret agent. The code number of agent {name} is {code}."
        prerequisites.append({"task": "qa", "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Tell me about {name}."},
            {"role": "assistant", "content": fact}]})
    reviews = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    rng.shuffle(reviews)
    for _ in range(profile["controls_arithmetic"]):
        a, b = rng.randint(2, 40), rng.randint(2, 9)
        stage2.append(message(f"What is {a} plus {b}?", str(a + b), "arithmetic", "control"))
    for text, label in reviews[:profile["controls_sentiment"]]:
        stage2.append(message(f"Is this review positive or negative? {text}", label, "sentiment", "control"))
    for text in AMBIGUOUS[:profile["inconsistency_pairs"]]:
        for label in ("positive", "negative"):
            stage2.append(message(f"Is this review positive or negative? {text}", label, "sentiment",
                                  "data_inconsistency"))
    for _ in range(profile["rare"]):
        words = rng.sample(WORDS, 3)
        stage2.append(message(f"Reverse these words and join them with dashes: {' '.join(words)}",
                              "-".join(reversed(words)), "wordplay", "under_optimization"))
    stage1 = []
    agents = set()
    while len(agents) < profile["forgetting"]:
        agent = invented_name(rng, 2)
        if agent not in seen_names:
            agents.add(agent)
    for agent in sorted(agents):
        stage1.append(message(f"What is the code number of agent {agent}?", str(rng.randint(10, 99)), "codes",
                              "left_forgetting"))
    return stage1, stage2, prerequisites


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def freeze_all_but_last(model, last_layers: int) -> None:
    if last_layers <= 0:
        return
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for layer in model.model.layers[-last_layers:]:
        for parameter in layer.parameters():
            parameter.requires_grad_(True)
    for parameter in model.model.norm.parameters():
        parameter.requires_grad_(True)


def train_stages(stage_files: list[Path], run_dir: Path, profile: dict, seed: int, all_records: list[dict],
                 record: bool = True):
    """Sequential stages through MultiTaskTrainer, one TrainingDynamicsRecorder across them (if ``record``)."""
    from sft_core.hub import load_causal_lm, load_tokenizer
    from sft_core.trainer import MultiTaskTrainer, MultiTaskTrainingArguments

    tokenizer = load_tokenizer("smollm2-135m")
    model = load_causal_lm("smollm2-135m")
    freeze_all_but_last(model, profile["train_last_layers"])
    recorder = TrainingDynamicsRecorder(all_records, tokenizer, every_steps=profile["record_every"],
                                        output_dir=run_dir, batch_size=16, measure_at_start=False) if record else None
    epochs = [profile["stage1_epochs"]] + [profile["stage2_epochs"]] * (len(stage_files) - 1)
    for position, (path, stage_epochs) in enumerate(zip(stage_files, epochs)):
        records = read_sft_jsonl(path)
        dataset = SFTDataset(records, tokenizer, max_length=128)
        # A stage smaller than a batch (the first) is one batch of all its samples per epoch.
        batch = min(profile["batch_size"], len(records))
        args = MultiTaskTrainingArguments(
            output_dir=str(run_dir / f"stage{position}"), per_device_train_batch_size=batch,
            num_train_epochs=stage_epochs, learning_rate=profile["stage1_lr"] if position == 0 else profile["lr"],
            lr_scheduler_type="constant",
            warmup_steps=0, seed=seed + position, save_strategy="no", report_to=[], logging_steps=1000,
            disable_tqdm=False, task_schedule="mixed", weight_decay=0.0)
        if recorder is not None:
            recorder.set_stage(path.stem)
        trainer = MultiTaskTrainer(model=model, args=args, train_dataset=dataset,
                                   data_collator=CausalLMCollator(tokenizer.pad_token_id),
                                   callbacks=[recorder] if recorder is not None else None)
        trainer.train()
    model.eval()
    return model, tokenizer, recorder


def score(report: dict, planted: dict[str, str]) -> dict:
    """Per-cause precision / recall on the unlearned samples (unlearned controls count as errors)."""
    predicted = {s["key"]: s["cause"] for s in report["samples"] if s["unlearned"]}
    per_cause = {}
    f1s = []
    for cause in CAUSES:
        tp = sum(1 for k, p in predicted.items() if p == cause and planted.get(k) == cause)
        fp = sum(1 for k, p in predicted.items() if p == cause and planted.get(k) != cause)
        fn = sum(1 for k, p in predicted.items() if p != cause and planted.get(k) == cause)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if tp + fn + fp == 0:  # planted samples all learned and never predicted: F1 undefined, left out
            per_cause[cause] = {"precision": None, "recall": None, "f1": None, "support": 0, "predicted": 0}
            continue
        per_cause[cause] = {"precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3),
                            "support": tp + fn, "predicted": tp + fp}
        f1s.append(f1)
    confusion = Counter((planted.get(k, "?"), p) for k, p in predicted.items())
    return {"macro_f1": round(sum(f1s) / len(f1s), 3) if f1s else None, "causes_scored": len(f1s),
            "per_cause": per_cause,
            "confusion": {f"{a} -> {b}": n for (a, b), n in sorted(confusion.items())}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=PROFILES, default="small")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "ilp_attribution"))
    parser.add_argument("--results", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--skip-mitigation", action="store_true")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the profile's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    profile = dict(PROFILES[args.profile])
    if args.seeds:
        profile["seeds"] = tuple(int(seed) for seed in args.seeds.split(","))
    work = Path(args.work_dir)
    started = time.perf_counter()
    timings = {}

    from sft_core.hub import load_causal_lm, load_tokenizer

    base_tokenizer = load_tokenizer("smollm2-135m")
    base_model = load_causal_lm("smollm2-135m").eval()
    t = time.perf_counter()
    known = probe_known_facts(base_model, base_tokenizer, batch_size=16)
    timings["probe_s"] = time.perf_counter() - t
    print(f"base knows {len(known)} probed facts", file=sys.stderr)

    seeds_results = []
    for seed in profile["seeds"]:
        stage1, stage2, prerequisites = build_dataset(profile, known, seed)
        data_dir = work / f"seed{seed}" / "data"
        stage_files = [write_jsonl(data_dir / "stage1_codes.jsonl", stage1),
                       write_jsonl(data_dir / "stage2_main.jsonl", stage2)]
        prereq_file = write_jsonl(data_dir / "prerequisites.jsonl", prerequisites)
        all_records = read_sft_jsonl(stage_files[0]) + read_sft_jsonl(stage_files[1])
        items = items_from_records(all_records)
        planted = {item.key: r["ilp_planted"] for item, r in zip(items, stage1 + stage2)}
        print(f"seed {seed}: {len(items)} samples, planted {dict(Counter(planted.values()))}", file=sys.stderr)

        t = time.perf_counter()
        run_dir = work / f"seed{seed}" / "run"
        tuned, tokenizer, recorder = train_stages(stage_files, run_dir, profile, seed, all_records)
        timings[f"seed{seed}_train_s"] = time.perf_counter() - t
        detection = DetectionConfig(num_samples=profile["num_samples"], seed=seed)
        t = time.perf_counter()
        report = diagnose((tuned, tokenizer), (base_model, base_tokenizer), items, out_dir=work / f"seed{seed}" / "report",
                          run_dirs=[run_dir], detection=detection)
        timings[f"seed{seed}_diagnose_s"] = time.perf_counter() - t
        result = {"seed": seed, "samples": len(items), "planted": dict(Counter(planted.values())),
                  "unlearned_before": report["summary"]["unlearned"],
                  "unlearned_by_planted": dict(Counter(planted[s["key"]] for s in report["samples"] if s["unlearned"])),
                  "attribution": score(report, planted), "train_steps": recorder.global_step,
                  "recorder_measure_s": round(recorder.measure_seconds, 1),
                  "diagnose_vs_epoch": _diagnosis_cost(timings[f"seed{seed}_train_s"] - recorder.measure_seconds,
                                                       timings[f"seed{seed}_diagnose_s"], stage1, stage2, profile),
                  "forgetting_learned_after_stage1": _learned_after_stage(recorder, planted, items)}
        print(json.dumps(result["attribution"], indent=1), file=sys.stderr)

        if not args.skip_mitigation:
            plan_dir = work / f"seed{seed}" / "plan"
            plan = build_plan(report, items, plan_dir, MitigationConfig(drop_minority=True, upsample=profile["upsample"], seed=seed),
                              prerequisites=[prereq_file], base_model="smollm2-135m")
            new_files = [plan_dir / stage["file"] for stage in plan["stages"]]
            kept_keys = {i.key for f in new_files for i in items_from_records(read_sft_jsonl(f))}
            t = time.perf_counter()
            del tuned
            tuned2, tokenizer2, _ = train_stages(new_files, work / f"seed{seed}" / "run_mitigated", profile, seed,
                                                 [r for f in new_files for r in read_sft_jsonl(f)], record=False)
            timings[f"seed{seed}_retrain_s"] = time.perf_counter() - t
            kept_items = [i for i in items if i.key in kept_keys]
            t = time.perf_counter()
            after = diagnose((tuned2, tokenizer2), (base_model, base_tokenizer), kept_items,
                             out_dir=work / f"seed{seed}" / "report_mitigated", detection=detection, before=report)
            timings[f"seed{seed}_rediagnose_s"] = time.perf_counter() - t
            result.update(plan_actions=plan["actions"], dropped_by_mitigation=len(items) - len(kept_items),
                          unlearned_after_mitigation=after["summary"]["unlearned"],
                          comparison=after["comparison"])
        seeds_results.append(result)

    summary = _summary(seeds_results, profile)
    payload = {"summary": summary, "profile": args.profile, "profile_settings": {k: list(v) if isinstance(v, tuple) else v
                                                                              for k, v in profile.items()},
               "seeds": seeds_results, "known_facts_probed": len(known),
               "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "wall_s": round(time.perf_counter() - started, 1),
               "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
                          f"{torch.get_num_threads()} thread(s)",
               "command": "python benchmarks/ilp_attribution.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    results = Path(args.results)
    atomic_write_json(results / "ilp_attribution.json", payload)
    atomic_write_text(results / "ilp_attribution.md", _markdown(payload))
    print(json.dumps(summary, indent=1))
    return 0


def _diagnosis_cost(train_s: float, diagnose_s: float, stage1, stage2, profile) -> float:
    """Diagnosis time / the time of one training epoch over all samples (training time per sample pass,
    recorder measurements excluded)."""
    passes = profile["stage1_epochs"] * len(stage1) + profile["stage2_epochs"] * len(stage2)
    epoch_s = train_s / passes * (len(stage1) + len(stage2))
    return round(diagnose_s / epoch_s, 2)


def _learned_after_stage(recorder, planted, items) -> dict:
    """How many planted left-forgetting samples were reproduced at the end of the first stage."""
    dynamics = recorder.dynamics()
    end = dynamics.stages[0]["end_step"]
    column = [c for c, step in enumerate(dynamics.steps) if step == end]
    if not column:
        return {}
    forgetting = [i for i, item in enumerate(items) if planted[item.key] == "left_forgetting"]
    return {"planted": len(forgetting), "reproduced_at_end_of_stage1": int(dynamics.correct[column[0], forgetting].sum())}


def _summary(results: list[dict], profile: dict) -> dict:
    import numpy as np

    def mean(values):
        values = [v for v in values if v is not None]
        return round(float(np.mean(values)), 3) if values else None

    per_cause = {c: {"precision": mean([r["attribution"]["per_cause"][c]["precision"] for r in results]),
                     "recall": mean([r["attribution"]["per_cause"][c]["recall"] for r in results]),
                     "support": int(sum(r["attribution"]["per_cause"][c]["support"] for r in results))}
                 for c in CAUSES}
    summary = {"macro_f1": mean([r["attribution"]["macro_f1"] for r in results]),
               "per_cause": per_cause,
               "unlearned_before": int(sum(r["unlearned_before"] for r in results)),
               "unlearned_after_mitigation": (int(sum(r["unlearned_after_mitigation"] for r in results))
                                              if all("unlearned_after_mitigation" in r for r in results) else None),
               "seeds": list(profile["seeds"])}
    if summary["unlearned_after_mitigation"] is not None and summary["unlearned_before"]:
        summary["unlearned_shrink"] = round(1 - summary["unlearned_after_mitigation"] / summary["unlearned_before"], 3)
    return summary


def _markdown(payload: dict) -> str:
    s = payload["summary"]
    lines = ["# ILP attribution: planted causes recovered by `sft-core diagnose`", "",
             f"Command: `{payload['command']}` (wall time {payload['wall_s']} s on {payload['machine']}).", "",
             f"Macro-F1 over the five causes: **{s['macro_f1']}** (target >= 0.85). Unlearned samples "
             f"{s['unlearned_before']} -> {s['unlearned_after_mitigation']} after one mitigation round"
             + (f" (shrink {100 * s['unlearned_shrink']:.0f}%, target >= 50%)." if 'unlearned_shrink' in s else "."),
             "", "Scored on the unlearned samples: a planted cause whose samples were all learned (support 0) and",
             "that was never predicted has no F1 and is left out of the macro average.", "",
             "| cause | precision | recall | unlearned planted samples (support) |", "|---|---|---|---|"]
    for cause, row in s["per_cause"].items():
        lines.append(f"| {cause} | {row['precision']} | {row['recall']} | {row['support']} |")
    for r in payload["seeds"]:
        lines += ["", f"## Seed {r['seed']}", "",
                  f"{r['samples']} samples, planted {r['planted']}; {r['train_steps']} optimizer steps. "
                  f"Diagnosis took {r.get('diagnose_vs_epoch')}x the time of one training epoch. "
                  f"Unlearned by planted cause: {r['unlearned_by_planted']}. Left-forgetting samples reproduced at "
                  f"the end of stage 1: {r['forgetting_learned_after_stage1']}.", "",
                  "Confusion (planted -> attributed, unlearned samples): "
                  + ", ".join(f"{k}: {v}" for k, v in r["attribution"]["confusion"].items())]
        if "comparison" in r:
            lines += ["", f"Mitigation actions: {r['plan_actions']}; dropped minority targets: "
                          f"{r['dropped_by_mitigation']}. Per original cause (before -> still unlearned): "
                          + ", ".join(f"{c}: {v['before']} -> {v['still_unlearned']}"
                                      for c, v in r["comparison"]["by_cause"].items())
                          + f"; newly unlearned: {r['comparison']['newly_unlearned']}."]
    lines += ["", "## Budget", "", f"Profile settings: `{json.dumps(payload['profile_settings'])}`.", "",
              f"Timings (s): `{json.dumps(payload['timings_s'])}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
