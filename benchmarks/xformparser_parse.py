"""Benchmark: `xformparser parse` end to end on the 50 FUNSD test pages (pair F1 and latency).

Rows (all through xformparser.pipeline.FormParser, the object `xformparser parse` uses):
- end to end: rapidocr (tuned options) -> candidates -> default model SER -> model linker;
- gold OCR: the FUNSD annotation boxes and text as bring-your-own OCR (one line per gold entity; labels
  and links are not given to the parser), same model: separates OCR loss from model loss;
- rule linker: rapidocr, the model's predicted labels, links from the geometric rule;
- candidate variants on the same OCR (lines split by the model's BIO head / both / not at all; with the
  multi-line merge). The end-to-end row uses the defaults (colon split, no merge).

Pair F1 against the gold question -> answer links, with OCR entities matched to gold entities by box
share and normalised text (rule and thresholds: xformparser/parse_eval.py and docs/xformparser.md).

Latency per page = ocr (image decoding + OCR) + model (tokenisation + forward + re-pooling) + post
(candidate rules, linking decode, JSON), from the pipeline's own ``timing``; one-off start-up (model
load, onnxruntime sessions) is excluded and reported separately.

    python benchmarks/xformparser_parse.py [--data-root ../shared/datasets] [--model DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASELINE = {"name": "colon rules on rapidocr lines (issue 12)", "pair_f1": 0.342, "precision": 0.553, "recall": 0.247}


def page_pair_counts(result, document):
    from xformparser.parse_eval import page_pair_counts as counts

    return counts(result, document)


def scores(counts):
    from xformparser.parse_eval import combine_counts

    return combine_counts(counts)


class CachingOcr:
    """Wraps an OCR engine and stores every page's lines as BYO OCR JSON (reused by the other rows)."""

    def __init__(self, engine, folder: Path):
        self.engine, self.folder, self.name = engine, folder, engine.name
        self.current_source = None

    def __call__(self, image):
        cpu_started = time.process_time()
        page = self.engine(image)
        self.last_cpu_seconds = time.process_time() - cpu_started
        record = {"width": page.width, "height": page.height, "engine": page.engine, "seconds": page.seconds,
                  "cpu_seconds": self.last_cpu_seconds,
                  "lines": [{"text": l.text, "box": l.box, "score": l.score,
                             "words": [{"text": w.text, "box": w.box} for w in l.words]} for l in page.lines]}
        (self.folder / f"{Path(self.current_source).stem}.json").write_text(json.dumps(record))
        return page


def run_row(name, parser_factory, images, documents, ocr_spec, progress=True, cached_ocr_dir=None):
    from xformparser.pipeline import FormParser

    parser = parser_factory()
    results, failures = [], []
    started = time.perf_counter()
    iterator = images
    if progress:
        from tqdm import tqdm

        iterator = tqdm(images, desc=name, file=sys.stderr)
    cpu_seconds, ocr_cpu_seconds = {}, {}
    for image in iterator:
        caching = isinstance(parser.ocr_engine, CachingOcr)
        if caching:
            parser.ocr_engine.current_source = image
        cpu_started = time.process_time()
        results += parser.parse([image], errors=failures)
        # CPU time of this process: a load-independent view of the cost on a shared machine (all work is
        # on the calling thread with one torch / onnxruntime thread).
        cpu_seconds[image] = time.process_time() - cpu_started
        if caching:
            ocr_cpu_seconds[image] = parser.ocr_engine.last_cpu_seconds
    wall = time.perf_counter() - started
    by_source = {r["source"]: r for r in results}
    counts, pages = [], []
    for image, document in zip(images, documents):
        result = by_source.get(image)
        if result is None:
            counts.append({"true_positive": 0, "predicted": 0, "gold": len(document.key_value_links()),
                           "entities": 0, "matched_entities": 0})
            continue
        count = page_pair_counts(result, document)
        counts.append(count)
        timing = dict(result["timing"])
        if cached_ocr_dir is not None:  # OCR ran earlier (--reuse-ocr): add its recorded engine time
            cached = json.loads((cached_ocr_dir / f"{Path(image).stem}.json").read_text())
            timing["ocr"] = round(timing["ocr"] + cached["seconds"], 4)
            ocr_cpu_seconds[image] = cached.get("cpu_seconds", 0.0)
            cpu_seconds[image] += ocr_cpu_seconds[image]
        pages.append({"doc_id": document.doc_id, **count, "timing": timing,
                      "seconds": round(sum(timing.values()), 4), "cpu_seconds": round(cpu_seconds[image], 4),
                      "ocr_engine_cpu_seconds": round(ocr_cpu_seconds.get(image, 0.0), 4),
                      "ocr_engine": result["ocr"]["engine"]})
    row = {"row": name, "ocr": ocr_spec, **scores(counts), "failed": failures, "wall_seconds": round(wall, 1)}
    if pages:
        totals = [p["seconds"] for p in pages]
        row["seconds_per_page_median"] = round(statistics.median(totals), 3)
        for part in ("ocr", "model", "post"):
            row[f"{part}_seconds_median"] = round(statistics.median(p["timing"][part] for p in pages), 4)
        row["model_share_of_time"] = round(sum(p["timing"]["model"] for p in pages) / max(sum(totals), 1e-9), 4)
        row["cpu_seconds_per_page_median"] = round(statistics.median(p["cpu_seconds"] for p in pages), 3)
        # Share of the model (everything but the OCR engine) in CPU time: unlike wall time, not inflated
        # by other jobs on the shared machine. Only meaningful for rows that ran or reused real OCR.
        ocr_cpu = sum(p["ocr_engine_cpu_seconds"] for p in pages)
        if ocr_cpu:
            row["model_share_of_cpu"] = round(1 - ocr_cpu / max(sum(p["cpu_seconds"] for p in pages), 1e-9), 4)
        if any(p["ocr_engine_cpu_seconds"] for p in pages):
            row["ocr_engine_cpu_seconds_median"] = round(statistics.median(p["ocr_engine_cpu_seconds"] for p in pages), 3)
    return row, pages


def ocr_sweep(images, gold_documents, configs, threads_note):
    """OCR latency and gold-word recall for rapidocr settings on the first pages."""
    from PIL import Image

    from xformparser.ocr import RapidOcrEngine, RapidOcrOptions
    from xformparser.parse_eval import normalise_text

    rows = []
    for name, options in configs.items():
        engine = RapidOcrEngine(RapidOcrOptions(**options))
        seconds, cpu, found, total, lines = [], [], 0, 0, 0
        for image_path, document in zip(images, gold_documents):
            with Image.open(image_path) as image:
                image = image.convert("RGB")
            started, cpu_started = time.perf_counter(), time.process_time()
            page = engine(image)
            seconds.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
            ocr_words = {normalise_text(w.text) for l in page.lines for w in l.words}
            gold_words = [normalise_text(w.text) for e in document.entities for w in e.words if normalise_text(w.text)]
            found += sum(w in ocr_words for w in gold_words)
            total += len(gold_words)
            lines += len(page.lines)
        rows.append({"config": name, "options": options, "pages": len(images),
                     "ocr_seconds_median": round(statistics.median(seconds), 3),
                     "ocr_cpu_seconds_median": round(statistics.median(cpu), 3),
                     "gold_word_recall": round(found / max(total, 1), 4), "lines": lines})
        print(f"ocr sweep {name}: median {rows[-1]['ocr_seconds_median']} s, word recall "
              f"{rows[-1]['gold_word_recall']}", file=sys.stderr, flush=True)
    return rows


SWEEP = {
    "rapidocr defaults (cls on, det min side 736, rec batch 6)": {"use_cls": True},
    "no cls": {"use_cls": False},
    "no cls, rec batch 16": {"use_cls": False, "rec_batch_num": 16},
    "no cls, det min side 640": {"use_cls": False, "det_limit_side_len": 640},
    "no cls, det min side 960": {"use_cls": False, "det_limit_side_len": 960},
    "no cls, 2 threads": {"use_cls": False, "threads": 2},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", str(ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--model", help="model directory (default: the shipped default model)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--det-side", type=int, default=736)
    parser.add_argument("--rec-batch", type=int, default=6)
    parser.add_argument("--limit", type=int, help="only the first N test pages (smoke runs)")
    parser.add_argument("--sweep-pages", type=int, default=8, help="pages for the OCR settings sweep (0 = skip)")
    parser.add_argument("--sweep-only", action="store_true", help="run the OCR settings sweep only and merge it "
                                                                     "into an existing results JSON")
    parser.add_argument("--render-only", action="store_true", help="rewrite the markdown from the results JSON")
    parser.add_argument("--reuse-ocr", action="store_true",
                        help="take rapidocr output from --work-dir's cache (F1 only; latency rows keep the cached OCR time)")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "xformparser_parse"))
    parser.add_argument("--results-dir", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from sft_core.atomic_io import atomic_write_json, atomic_write_text
    from xformparser.formats import load_documents
    from xformparser.ocr import RapidOcrOptions
    from xformparser.pipeline import FormParser

    from xformparser.parse_eval import MIN_BOX_SHARE, MIN_TEXT_RATIO

    test_dir = Path(args.data_root) / "funsd" / "testing_data"
    if not test_dir.is_dir():
        print(f"error: FUNSD test set not found at {test_dir} (pass --data-root)", file=sys.stderr)
        return 2
    documents = sorted(load_documents(str(test_dir), "funsd"), key=lambda d: d.doc_id)[: args.limit]
    images = [str(test_dir / "images" / f"{d.doc_id}.png") for d in documents]
    work = Path(args.work_dir)
    cache = work / "rapidocr_cache"
    cache.mkdir(parents=True, exist_ok=True)
    options = RapidOcrOptions(threads=args.threads, det_limit_side_len=args.det_side, rec_batch_num=args.rec_batch)

    results = Path(args.results_dir)
    if args.render_only:
        report = json.loads((results / "xformparser_parse.json").read_text())
        report.setdefault("model_card", _model_card(report["model"]))
        atomic_write_json(results / "xformparser_parse.json", report)
        atomic_write_text(results / "xformparser_parse.md", render_markdown(report))
        return 0
    sweep = ocr_sweep(images[: args.sweep_pages], documents[: args.sweep_pages], SWEEP, args.threads) \
        if args.sweep_pages else []

    if args.sweep_only:
        report = json.loads((results / "xformparser_parse.json").read_text())
        report["ocr_sweep"] = sweep
        report["sweep_command"] = "python benchmarks/xformparser_parse.py " + " ".join(argv if argv is not None else sys.argv[1:])
        atomic_write_json(results / "xformparser_parse.json", report)
        atomic_write_text(results / "xformparser_parse.md", render_markdown(report))
        return 0

    from xformparser.pipeline import _load_model

    # One model for every row, loaded once (and its card read now): a model folder replaced while the
    # benchmark runs cannot mix two models into one report.
    model_card = _model_card(args.model or "shipped default")
    started = time.perf_counter()
    model, tokenizer = _load_model(args.model)
    FormParser(model=model, tokenizer=tokenizer, ocr="rapidocr", ocr_options=options)
    startup = time.perf_counter() - started
    loaded = {"model": model, "tokenizer": tokenizer}

    def caching_parser(**kwargs):
        def build():
            built = FormParser(ocr="rapidocr", ocr_options=options, **loaded, **kwargs)
            built.ocr_engine = CachingOcr(built.ocr_engine, cache)
            return built
        return build

    def cached_parser(**kwargs):
        return lambda: FormParser(ocr=str(cache), **loaded, **kwargs)

    rows, per_page = [], {}
    main_factory = cached_parser() if args.reuse_ocr else caching_parser()
    row, pages = run_row("end_to_end", main_factory, images, documents,
                         "rapidocr (OCR from the cache run)" if args.reuse_ocr else "rapidocr",
                         cached_ocr_dir=cache if args.reuse_ocr else None)
    rows.append(row)
    per_page["end_to_end"] = pages
    ocr_times = {p["doc_id"]: p["timing"]["ocr"] for p in pages}
    variants = [
        ("gold_ocr", lambda: FormParser(ocr=str(test_dir / "annotations"), **loaded), "FUNSD annotation boxes"),
        ("rule_linker", cached_parser(linker="rule"), "rapidocr (cached)"),
        ("split_model_bio", cached_parser(split="model"), "rapidocr (cached)"),
        ("split_both", cached_parser(split="both"), "rapidocr (cached)"),
        ("no_split", cached_parser(split="none"), "rapidocr (cached)"),
        ("merge_lines", cached_parser(merge_lines=True), "rapidocr (cached)"),
        ("gold_ocr_rule_linker", lambda: FormParser(ocr=str(test_dir / "annotations"), linker="rule", **loaded),
         "FUNSD annotation boxes"),
    ]
    for name, factory, ocr_spec in variants:
        row, pages = run_row(name, factory, images, documents, ocr_spec)
        rows.append(row)
        per_page[name] = pages
        print(f"{name}: pair F1 {row['pair_f1']}", file=sys.stderr, flush=True)

    main_row = rows[0]
    by_name = {r["row"]: r for r in rows}
    summary = {
        "pair_f1": main_row["pair_f1"], "pair_f1_gold_ocr": by_name["gold_ocr"]["pair_f1"],
        "pair_f1_rule_linker": by_name["rule_linker"]["pair_f1"],
        # Per-page cost as process CPU seconds (one thread for torch and onnxruntime, so CPU time is what an
        # idle 1-core run would take); wall time on this shared machine is in the rows, inflated by load.
        "seconds_per_page_median": main_row.get("cpu_seconds_per_page_median"),
        "model_share_of_time": main_row.get("model_share_of_cpu"), "pages": len(per_page["end_to_end"]),
        "latency_basis": "process CPU seconds per page, 1 thread (wall-clock medians in rows[0])",
    }
    model_name = args.model or "shipped default (xformparser/default_model)"
    report = {
        "summary": summary, "baseline": BASELINE, "rows": rows, "ocr_sweep": sweep,
        "startup_seconds": round(startup, 2), "model": model_name, "model_card": model_card,
        "ocr_options": vars(options), "matching": {"min_box_share": MIN_BOX_SHARE, "min_text_ratio": MIN_TEXT_RATIO,
                                                   "defined_in": "xformparser/parse_eval.py"},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "threads": args.threads, "note": "2 CPU cores shared with other jobs; latencies are noisy"},
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix() if sys.argv else "benchmarks/xformparser_parse.py",
                                         *(argv if argv is not None else sys.argv[1:])]),
        "per_page": per_page["end_to_end"], "per_page_gold_ocr": per_page["gold_ocr"],
    }
    atomic_write_json(results / "xformparser_parse.json", report)
    atomic_write_text(results / "xformparser_parse.md", render_markdown(report))
    print(json.dumps(summary, indent=2))
    return 0


def _model_card_lines(card: dict | None) -> list[str]:
    if not card:
        return []
    recipe, data = card.get("recipe") or {}, card.get("training_data") or {}
    return [f"Model training budget (from its manifest): {recipe.get('epochs')} epochs, {recipe.get('optimizer_steps')} "
            f"optimizer steps, {recipe.get('train_wall_seconds')} s wall, seed {recipe.get('seed')}, on "
            f"{data.get('funsd_train_forms')} FUNSD train forms + {data.get('synthetic_forms')} synthetic forms; "
            f"its FUNSD test scores on gold boxes: {json.dumps(card.get('funsd_test'))}.", ""]


def _model_card(model_name: str) -> dict | None:
    """Training data, recipe and budget of the shipped default model (from its manifest)."""
    if not model_name.startswith("shipped default"):
        return None
    from xformparser.defaults import default_model_card

    card = default_model_card()
    return {key: card.get(key) for key in ("training_data", "recipe", "funsd_test", "weights_bytes")}


def render_markdown(report: dict) -> str:
    s = report["summary"]
    lines = [
        "# xformparser parse: FUNSD test pages end to end",
        "",
        f"Generated by `benchmarks/xformparser_parse.py`. Command: `{report['command']}`",
        "",
        f"Model: {report['model']}. Pages: {s['pages']} (FUNSD testing_data). Machine: {report['machine']['cpus']} "
        f"CPU cores shared with other jobs (load varies; latencies are noisy), {report['machine']['threads']} thread(s) "
        f"for torch and onnxruntime. No training happens here. One-off start-up (model load + OCR sessions): "
        f"{report['startup_seconds']} s, excluded from per-page times.",
        "",
        *_model_card_lines(report.get("model_card")),
        "| row | OCR | pair F1 | P | R | median s/page (wall) | median CPU s/page | OCR / model / post (median wall s) | model share (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        timing = (f"{row.get('ocr_seconds_median', '-')} / {row.get('model_seconds_median', '-')} / "
                  f"{row.get('post_seconds_median', '-')}")
        lines.append(f"| {row['row']} | {row['ocr']} | {row['pair_f1']:.3f} | {row['precision']:.3f} | "
                     f"{row['recall']:.3f} | {row.get('seconds_per_page_median', '-')} | "
                     f"{row.get('cpu_seconds_per_page_median', '-')} | {timing} | "
                     f"{row.get('model_share_of_time', '-')} / {row.get('model_share_of_cpu', '-')} |")
    b = report["baseline"]
    lines += ["", f"Baseline to beat ({b['name']}): pair F1 {b['pair_f1']} (P {b['precision']}, R {b['recall']}).", ""]
    if report["ocr_sweep"]:
        lines += ["## rapidocr settings (first pages, OCR only)", "",
                  f"Command: `{report.get('sweep_command', report['command'])}`", "",
                  "| settings | pages | median OCR s/page (wall) | median OCR CPU s/page | gold-word recall | lines |",
                  "|---|---|---|---|---|---|"]
        for row in report["ocr_sweep"]:
            lines.append(f"| {row['config']} | {row['pages']} | {row['ocr_seconds_median']} | {row['ocr_cpu_seconds_median']} | "
                         f"{row['gold_word_recall']} | {row['lines']} |")
        lines.append("")
    m = report["matching"]
    lines += [
        "OCR: rapidocr ran once over the 50 pages (a first run of this script, same options) and its output "
        "and per-page OCR time are cached under --work-dir; with --reuse-ocr the rows parse that cached OCR "
        "and the end-to-end row adds the recorded OCR time. CPU seconds are process time with one torch and "
        "one onnxruntime thread; wall seconds were inflated by ~10 other jobs on the 2 cores.",
        "",
        "Matching: a predicted entity matches the gold entity covering the largest share of its box when the "
        f"share is >= {m['min_box_share']} and the normalised texts have a difflib ratio >= {m['min_text_ratio']}; "
        "a predicted pair is correct when both ends match the ends of a gold question -> answer link "
        "(duplicates count once). Rows other than end_to_end reuse end_to_end's OCR output (same text and boxes).",
        "",
        f"Summary: `{json.dumps(s)}`",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
