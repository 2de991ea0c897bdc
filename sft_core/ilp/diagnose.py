"""`diagnose`: detect unlearned training samples, compute every signal, attribute causes, build the report.

    from sft_core.ilp import diagnose
    report = diagnose(tuned=["runs/sft"], base="smollm2-135m", data=["train.jsonl"], run_dirs=["runs/sft"],
                      out_dir="reports/sft")

The pieces are usable alone: :func:`compute_signal_table` (signals from arrays and models),
:func:`sft_core.ilp.attribution.attribute` (rules), :func:`sft_core.ilp.report.write_report` (files).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import signals as S
from .attribution import attribute
from .checkers import get_checker
from .config import CAUSES, UNEXPLAINED, AttributionConfig, DetectionConfig
from .dynamics import Dynamics, load_dynamics
from .items import Item, read_items
from .probes import encode_completion, generate_answers, neutral_prompt, score_completions


def _load(model_or_name, what: str):
    """A (model, tokenizer) pair from a name/directory or an already-loaded pair."""
    if isinstance(model_or_name, tuple):
        return model_or_name
    from sft_core.hub import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(model_or_name))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_causal_lm(str(model_or_name))
    model.eval()
    return model, tokenizer


def detect(model, tokenizer, items: list[Item], config: DetectionConfig, batch_size: int = 16,
           max_length: int = 512, progress: bool = True) -> dict:
    """Greedy + ``num_samples`` sampled answers per item, checked against the target.

    Returns ``greedy`` [N] str, ``samples`` [N][S] str, ``attempts_passed`` [N, 1+S] bool, ``pass_rate`` [N].
    """
    checker = get_checker(config.checker)
    budgets = [config.max_new_tokens or len(encode_completion(i.prompt_messages, i.target, tokenizer, max_length)[0])
               - len(encode_completion(i.prompt_messages, "", tokenizer, max_length)[0]) + 8 for i in items]
    greedy, samples = generate_answers(model, tokenizer, [i.prompt_messages for i in items],
                                       num_samples=config.num_samples, max_new_tokens=budgets,
                                       temperature=config.temperature, top_p=config.top_p, batch_size=batch_size,
                                       max_length=max_length, seed=config.seed,
                                       progress="generate (tuned)" if progress else None)
    passed = np.array([[checker(answer, item.target) for answer in [g] + list(s)]
                       for item, g, s in zip(items, greedy, samples)], dtype=bool).reshape(len(items), -1)
    return {"greedy": greedy, "samples": samples, "attempts_passed": passed, "pass_rate": passed.mean(axis=1)}


def _contrastive_pmi(base, tokenizer, items, embeddings, unlearned, target_logp, batch_size, max_length, progress,
                     neighbours: int = 2) -> np.ndarray:
    """For unlearned samples: base mean log-prob/token of the target given its own input minus given the inputs
    of its ``neighbours`` most similar samples with other targets (NaN elsewhere).

    Blank-input PMI also credits what the *kind* of question implies ("code number" -> some number, "capital
    of" -> some city); swapping in a same-kind neighbour's input cancels that, so what remains is what this
    particular input tells the base model about this target: ~0 when the base lacks the knowledge.
    """
    n = len(items)
    result = np.full(n, np.nan)
    similarity = S.cosine_similarity_matrix(embeddings)
    normalized = [S.normalize_text(i.target) for i in items]
    rows, prompts, answers = [], [], []
    for i in np.flatnonzero(unlearned):
        order = [j for j in np.argsort(-similarity[i]) if j != i and normalized[j] != normalized[i]][:neighbours]
        for j in order:
            rows.append(i)
            prompts.append(items[j].prompt_messages)
            answers.append(items[i].target)
    if not rows:
        return result
    scores = score_completions(base, tokenizer, prompts, answers, batch_size, max_length, content_only=True,
                               progress="base: neighbour inputs" if progress else None)
    sums, counts = np.zeros(n), np.zeros(n)
    for i, loss in zip(rows, scores["loss"]):
        sums[i] += -loss
        counts[i] += 1
    has = counts > 0
    result[has] = target_logp[has] - sums[has] / counts[has]
    return result


def _mentions(text: str, answer: str) -> bool:
    """``answer`` occurs in ``text`` as whole normalised words (so "Rome" is in "The capital is Rome.")."""
    needle = S.normalize_text(answer)
    return bool(needle) and f" {needle} " in f" {S.normalize_text(text)} "


def _dynamics_signals(dynamics: Dynamics, config: AttributionConfig) -> dict[str, np.ndarray]:
    table = {}
    if dynamics.losses.shape[0] == 0:
        return table
    table.update(S.cartography(dynamics.probs, dynamics.correct))
    table["forgetting_events"] = S.forgetting_events(dynamics.correct).astype(float)
    table["learned_then_lost"] = S.learned_then_lost(dynamics.correct).astype(float)
    table["step_first_learned"] = S.step_first_learned(dynamics.correct, dynamics.steps)
    table["peak_prob_drop"] = S.peak_minus_final(dynamics.probs)
    table["loss_drop"] = S.relative_loss_drop(dynamics.losses, dynamics.steps, window=3)
    stage_index = dynamics.stage_index_of_last_seen()
    order = S.order_signals(dynamics.first_seen, dynamics.last_seen, dynamics.total_steps, stage_index,
                            num_stages=len(dynamics.stages))
    table.update(order)
    table["times_seen"] = dynamics.times_seen.astype(float)
    table["stage"] = stage_index
    never_recorded = np.isnan(dynamics.losses).all(axis=0)
    for name in table:
        table[name] = np.where(never_recorded, np.nan, table[name])
    return table


def _alternative_margins(base, tokenizer, items, candidates, target_pmi, batch_size, max_length,
                         progress) -> dict[str, np.ndarray | list]:
    """For each sample, the wrong answer (among ``candidates``: answers the tuned model gave that the checker
    rejects) that the base model links most strongly to this input.

    Link strength is the answer's PMI under the base model: mean log-prob per token of the answer given the
    input minus given a blank input. Raw probabilities are not comparable here: a chat model's preference
    for its own answer format (a full sentence) and tokenisation quirks swamp what it knows, while both
    cancel in the PMI. Returns ``alt_pmi``, ``margin`` (alt PMI - target PMI), ``alt_prob`` (the answer's
    base probability given the input) and ``alt_answer``.
    """
    n = len(items)
    flat_index, flat_prompts, flat_answers = [], [], []
    for i, options in enumerate(candidates):
        for answer in options:
            flat_index.append(i)
            flat_prompts.append(items[i].prompt_messages)
            flat_answers.append(answer)
    result = {"alt_pmi": np.full(n, np.nan), "margin": np.full(n, np.nan), "alt_prob": np.full(n, np.nan),
              "alt_answer": [""] * n}
    if not flat_answers:
        return result
    with_input = score_completions(base, tokenizer, flat_prompts, flat_answers, batch_size, max_length,
                                   progress="base: alternatives" if progress else None, content_only=True)
    blank = score_completions(base, tokenizer, [neutral_prompt(p) for p in flat_prompts], flat_answers, batch_size,
                              max_length, progress="base: alternatives, blank input" if progress else None,
                              content_only=True)
    for k, (i, answer) in enumerate(zip(flat_index, flat_answers)):
        pmi = blank["loss"][k] - with_input["loss"][k]
        if np.isnan(result["alt_pmi"][i]) or pmi > result["alt_pmi"][i]:
            result["alt_pmi"][i] = pmi
            result["margin"][i] = pmi - target_pmi[i]
            result["alt_prob"][i] = with_input["prob"][k]
            result["alt_answer"][i] = answer
    return result


def compute_signal_table(items: list[Item], tuned, base, detection: dict, dynamics: Dynamics | None,
                         config: AttributionConfig, checker, embeddings: np.ndarray | None,
                         batch_size: int = 16, max_length: int = 512, progress: bool = True,
                         max_alternatives: int = 3, base_answer_tokens: int = 24) -> tuple[dict, dict]:
    """Every per-sample signal -> ``(table of [N] float arrays, extras with strings)``."""
    tuned_model, tokenizer = tuned
    base_model, base_tokenizer = base
    prompts = [i.prompt_messages for i in items]
    targets = [i.target for i in items]
    unlearned = detection["pass_rate"] < detection["threshold"]
    table: dict[str, np.ndarray] = {"pass_rate": detection["pass_rate"], "unlearned": unlearned.astype(float)}

    tuned_scores = score_completions(tuned_model, tokenizer, prompts, targets, batch_size, max_length,
                                     reference_model=base_model, progress="tuned: target" if progress else None)
    table.update(final_loss=tuned_scores["loss"], tuned_prob=tuned_scores["prob"], js_base_tuned=tuned_scores["js"])
    # Base-model probes score the answer's own tokens (content_only): the chat template's closing tokens
    # are near-certain for any answer and would pull every per-token comparison towards zero.
    base_scores = score_completions(base_model, base_tokenizer, prompts, targets, batch_size, max_length,
                                    progress="base: target" if progress else None, content_only=True)
    neutral = score_completions(base_model, base_tokenizer, [neutral_prompt(p) for p in prompts], targets,
                                batch_size, max_length, progress="base: blank input" if progress else None,
                                content_only=True)
    table.update(base_loss=base_scores["loss"], base_prob=base_scores["prob"],
                 pmi=neutral["loss"] - base_scores["loss"])

    # "Does the base model's own (greedy) answer match?": every target token is the base's argmax, i.e. its
    # greedy answer starts with the target. Teacher-forced, so no generation is needed.
    table["base_matches"] = base_scores["correct"].astype(float)

    # Wrong answers the tuned model gave (in the SFT answer format; the base's free-form greedy answer is
    # fluent whatever it knows, so its per-token probability says little), only for unlearned samples.
    candidates = []
    for i, item in enumerate(items):
        options = {}
        if unlearned[i]:
            for answer in [detection["greedy"][i], *detection["samples"][i]]:
                key = S.normalize_text(answer)
                if answer.strip() and not checker(answer, item.target) and key not in options:
                    options[key] = answer
        candidates.append(list(options.values())[:max_alternatives])
    alternatives = _alternative_margins(base_model, base_tokenizer, items, candidates, table["pmi"], batch_size,
                                        max_length, progress)
    # The base model's own free-form answer, for unlearned samples only (generation is the costly part):
    # a tuned model that "reverts" to what the base says is the plainest sign of a knowledge conflict.
    base_answers = [""] * len(items)
    says_alternative = np.full(len(items), np.nan)
    says_target = np.full(len(items), np.nan)
    todo = [i for i in range(len(items)) if unlearned[i]]
    if todo:
        answers, _ = generate_answers(base_model, base_tokenizer, [prompts[i] for i in todo], num_samples=0,
                                      max_new_tokens=base_answer_tokens, batch_size=batch_size, max_length=max_length,
                                      progress="generate (base, unlearned)" if progress else None)
        for i, answer in zip(todo, answers):
            base_answers[i] = answer
            says_target[i] = float(_mentions(answer, targets[i]))
            # An alternative copied from the input (the tuned model answering with the question's own entity)
            # is echoed by any fluent answer; it is not a belief.
            beliefs = [alt for alt in candidates[i] if not _mentions(items[i].input_text, alt)]
            says_alternative[i] = float(any(_mentions(answer, alt) for alt in beliefs))
    table.update(base_says_alternative=says_alternative, base_says_target=says_target)
    table.update(base_alt_pmi=alternatives["alt_pmi"], base_alt_margin=alternatives["margin"],
                 base_alt_prob=alternatives["alt_prob"])

    if embeddings is not None and len(items) > 2:
        table["pmi_contrast"] = _contrastive_pmi(base_model, base_tokenizer, items, embeddings, unlearned,
                                                 -base_scores["loss"], batch_size, max_length, progress)

    # data consistency
    inputs = ["\n".join(f"{m['role']}: {m['content']}" for m in i.prompt_messages) for i in items]
    exact = S.exact_duplicate_conflicts(inputs, targets)
    table.update(exact_conflicts=exact["disagreeing"].astype(float), conflict_group=exact["group"].astype(float),
                 target_share=exact["target_share"])
    if embeddings is not None and len(items) > 1:
        neighbours = S.neighbour_target_conflicts(embeddings, targets, config.neighbour_similarity)
        density = S.neighbour_density(embeddings, k=5)
        _, sizes = S.cluster_sizes(embeddings, config.cluster_distance)
        table.update(neighbour_similarity=neighbours["similarity"], neighbour_index=neighbours["neighbour"].astype(float),
                     density=density, density_percentile=S.percentile_rank(density), cluster_size=sizes.astype(float))

    target_tokens = np.array([sum(1 for label in encode_completion(p, t, tokenizer, max_length)[1] if label != -100)
                              for p, t in zip(prompts, targets)], dtype=float)
    table.update(target_tokens=target_tokens, target_length_percentile=S.percentile_rank(target_tokens))
    if dynamics is not None:
        table.update(_dynamics_signals(dynamics, config))
    extras = {"best_alternative": alternatives["alt_answer"], "base_answer": base_answers}
    return table, extras


def _jsonable(value):
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else round(float(value), 5)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def diagnose(tuned, base, data, out_dir=None, run_dirs=(), detection: DetectionConfig | None = None,
             attribution: AttributionConfig | None = None, embedder: str | None = "minilm-l6",
             batch_size: int = 16, max_length: int = 512, before=None, progress: bool = True,
             write: bool = True) -> dict:
    """Run the whole diagnosis and (with ``out_dir``) write report.json, report.csv and report.html.

    Args:
        tuned: one or several tuned models (names/directories, or ``(model, tokenizer)`` pairs); several
            are seeds: pass rates are averaged.
        base: the base model (name/directory or pair).
        data: training JSONL paths, or :class:`Item` objects.
        run_dirs: directories holding ``ilp_dynamics.{npz,json}`` (sequential stages in order); optional.
        embedder: encoder alias/directory for near-duplicate and density signals (None: skip them).
        before: an earlier report (dict or report directory) to compare with, per cause.
    """
    detection_config = detection or DetectionConfig()
    config = attribution or AttributionConfig()
    started = time.perf_counter()
    timings = {}
    items = list(data) if data and isinstance(next(iter(data)), Item) else read_items(data)
    if not items:
        raise ValueError("no training samples to diagnose")
    tuned_list = list(tuned) if isinstance(tuned, list) else [tuned]  # a tuple is one (model, tokenizer) pair
    checker = get_checker(detection_config.checker)

    t = time.perf_counter()
    pass_rates, first_detection, first_pair = [], None, None
    for position, spec in enumerate(tuned_list):
        pair = _load(spec, "tuned")
        result = detect(pair[0], pair[1], items, detection_config, batch_size, max_length, progress)
        pass_rates.append(result["pass_rate"])
        if position == 0:
            first_detection, first_pair = result, pair
    first_detection["pass_rate"] = S.pass_rate(np.stack(pass_rates))
    first_detection["threshold"] = detection_config.pass_threshold
    timings["detection_s"] = time.perf_counter() - t

    t = time.perf_counter()
    dynamics = load_dynamics(run_dirs, [i.key for i in items]) if run_dirs else None
    embeddings = None
    if embedder:
        from .probes import embed_texts

        embeddings = embed_texts([i.input_text for i in items], embedder, progress="embed inputs" if progress else None)
    base_pair = _load(base, "base")
    table, extras = compute_signal_table(items, first_pair, base_pair, first_detection, dynamics, config, checker,
                                         embeddings, batch_size, max_length, progress)
    timings["signals_s"] = time.perf_counter() - t

    unlearned = first_detection["pass_rate"] < detection_config.pass_threshold
    attributions = attribute(table, unlearned, config)
    samples = []
    for i, item in enumerate(items):
        record = {"index": i, "key": item.key, "task": item.task, "source": item.source, "input": item.input_text,
                  "target": item.target, "greedy": first_detection["greedy"][i],
                  "sampled": first_detection["samples"][i], "base_answer": extras["base_answer"][i] or None,
                  "best_alternative": extras["best_alternative"][i] or None,
                  "pass_rate": _jsonable(first_detection["pass_rate"][i]), "unlearned": bool(unlearned[i]),
                  "cause": None, "secondary": [], "confidence": None, "scores": None, "evidence": {},
                  "signals": {name: _jsonable(values[i]) for name, values in table.items()}}
        if attributions[i] is not None:
            a = attributions[i]
            record.update(cause=a.primary, secondary=a.secondary, confidence=a.confidence, scores=a.scores,
                          evidence={k: _jsonable(v) for k, v in a.evidence.items()})
        samples.append(record)
    counts = {cause: sum(1 for s in samples if s["cause"] == cause) for cause in (*CAUSES, UNEXPLAINED)}
    report = {
        "summary": {"samples": len(items), "unlearned": int(unlearned.sum()),
                    "unlearned_rate": round(float(unlearned.mean()), 4), "causes": counts,
                    "tuned_models": len(tuned_list), "seconds": round(time.perf_counter() - started, 1),
                    "timings": {k: round(v, 1) for k, v in timings.items()}},
        "config": {"detection": asdict(detection_config), "attribution": config.to_dict(),
                   "embedder": embedder, "run_dirs": [str(r) for r in run_dirs]},
        "dynamics": None if dynamics is None else {
            "steps": dynamics.steps.tolist(), "stages": dynamics.stages, "checkpoint_stage": dynamics.checkpoint_stage,
            "correct_fraction_by_cause": _timeline(dynamics, samples)},
        "samples": samples,
    }
    if before is not None:
        report["comparison"] = compare_reports(before, report)
    if out_dir is not None and write:
        from .report import write_report

        write_report(report, out_dir)
    if progress:
        print(f"diagnosed {len(items)} samples: {int(unlearned.sum())} unlearned "
              f"({', '.join(f'{c}={n}' for c, n in counts.items() if n)})", file=sys.stderr)
    return report


def _timeline(dynamics: Dynamics, samples: list[dict]) -> dict[str, list[float]]:
    """Per cause (and "learned"): the fraction of its samples reproduced at each checkpoint."""
    groups: dict[str, list[int]] = {}
    for s in samples:
        groups.setdefault(s["cause"] or "learned", []).append(s["index"])
    timeline = {}
    for name, indices in groups.items():
        correct = dynamics.correct[:, indices]
        timeline[name] = [round(float(v), 4) for v in correct.mean(axis=1)] if correct.size else []
    return timeline


def load_report(report_or_dir) -> dict:
    import json

    if isinstance(report_or_dir, dict):
        return report_or_dir
    path = Path(report_or_dir)
    if path.is_dir():
        path = path / "report.json"
    return json.loads(path.read_text(encoding="utf-8"))


def compare_reports(before, after) -> dict:
    """Per cause of the ``before`` report: how many of its unlearned samples are still unlearned ``after``
    (matched by sample key), learned now, or absent from the new data (e.g. a dropped minority target)."""
    before = load_report(before)
    after = load_report(after)
    now = {s["key"]: s for s in after["samples"]}
    rows = {}
    for s in before["samples"]:
        if not s["unlearned"]:
            continue
        row = rows.setdefault(s["cause"], {"before": 0, "still_unlearned": 0, "learned": 0, "removed": 0})
        row["before"] += 1
        match = now.get(s["key"])
        if match is None:
            row["removed"] += 1
        elif match["unlearned"]:
            row["still_unlearned"] += 1
        else:
            row["learned"] += 1
    total = {k: sum(r[k] for r in rows.values()) for k in ("before", "still_unlearned", "learned", "removed")}
    newly = sum(1 for s in after["samples"] if s["unlearned"] and
                not any(b["key"] == s["key"] and b["unlearned"] for b in before["samples"]))
    return {"by_cause": rows, "total": total, "newly_unlearned": newly,
            "unlearned_before": before["summary"]["unlearned"], "unlearned_after": after["summary"]["unlearned"]}
