"""``xformparser parse``: form images / PDFs -> key-value JSON (stdout or --output), overlays.

    xformparser parse form.png scans/ invoice.pdf --output parsed.json --visualize overlays/
    find forms -name '*.png' | xformparser parse - --output parsed/

Output (stdout, or --output FILE.json): ``{"pages": [page, ...], "failed": [{"source", "page", "error"}],
"summary": {...}}``; with --output DIR, one ``<input stem>.json`` per input holding its ``pages``. Each
page follows the schema in docs/xformparser.md. A bad input is reported in one line on stderr and in
``failed``; the others are still parsed and the exit code is 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sft_core.atomic_io import atomic_write_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "parse", help="form images / PDFs -> key-value JSON (OCR + entity labels + key -> value links)",
        description="Parse form images (PNG/JPEG/TIFF/BMP/WebP), PDFs (every page; a text layer is used when "
                    "present), folders of them, or '-' (paths on stdin) into key-value JSON.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image, PDF, OCR JSON, folder, or - for stdin")
    parser.add_argument("--model", help="model directory (default: the model shipped in the package)")
    parser.add_argument("--ocr", default="rapidocr",
                        help="rapidocr (default, offline), tesseract, or an OCR JSON file / folder of <stem>.json "
                             "(schema in docs/xformparser.md; FUNSD/XFUND annotation files work too)")
    parser.add_argument("--output", help="OUT.json (one file) or a folder (one <stem>.json per input); "
                                         "default: JSON on stdout")
    parser.add_argument("--visualize", metavar="DIR", help="write one overlay PNG per page here")
    parser.add_argument("--linker", default="model", choices=("model", "rule"),
                        help="key -> value links from the model's biaffine scorer or the geometric rule")
    parser.add_argument("--split", default="colon", choices=("colon", "model", "both", "none"),
                        help="how merged 'Key: value' OCR lines are split: the colon rule, the model's BIO tags, "
                             "both (union), or not at all")
    parser.add_argument("--merge-lines", action="store_true",
                        help="merge stacked lines with the same label into one entity (multi-line values)")
    parser.add_argument("--batch-size", type=int, default=4, help="pages per model forward pass")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and onnxruntime")
    parser.add_argument("--det-side", type=int, default=736, help="rapidocr detection: page resized so its "
                                                                    "shorter side has this many pixels")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _output_names(sources: list[str]) -> dict[str, str]:
    """One distinct ``<stem>.json`` name per input source."""
    names, used = {}, set()
    for source in sources:
        stem = Path(source).stem or "input"
        name, number = f"{stem}.json", 2
        while name in used:
            name, number = f"{stem}_{number}.json", number + 1
        used.add(name)
        names[source] = name
    return names


def run(args) -> int:
    import torch

    from .ocr import RapidOcrOptions
    from .pipeline import FormParser
    from .visualize import write_overlay

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    torch.set_num_threads(max(1, args.threads))
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # stderr is for progress and per-input errors
    transformers_logging.disable_progress_bar()
    output = Path(args.output) if args.output else None
    to_folder = output is not None and (output.is_dir() or output.suffix.lower() != ".json")
    visualize = Path(args.visualize) if args.visualize else None
    if visualize is not None:
        visualize.mkdir(parents=True, exist_ok=True)

    parser = FormParser(model_dir=args.model, ocr=args.ocr, linker=args.linker, batch_size=args.batch_size,
                        split=args.split, merge_lines=args.merge_lines, ocr_options=RapidOcrOptions(threads=max(1, args.threads),
                                                                      det_limit_side_len=args.det_side))
    started = time.perf_counter()
    failures: list[dict] = []
    reported = 0
    pages = []
    overlay_names = set()
    for result, image in parser.iter_parse(args.inputs, errors=failures, progress=not args.no_progress):
        for failure in failures[reported:]:
            print(f"xformparser parse: failed: {failure['error']}", file=sys.stderr)
        reported = len(failures)
        pages.append(result)
        if visualize is not None:
            name = f"{Path(result['source']).stem}_p{result['page']}.png"
            while name in overlay_names:
                name = "_" + name
            overlay_names.add(name)
            write_overlay(visualize / name, image, result)
    for failure in failures[reported:]:
        print(f"xformparser parse: failed: {failure['error']}", file=sys.stderr)

    failed_sources = {f["source"] for f in failures}
    summary = {"inputs": len({p["source"] for p in pages} | failed_sources), "pages": len(pages),
               "failed": len(failures), "seconds": round(time.perf_counter() - started, 3)}
    if to_folder:
        output.mkdir(parents=True, exist_ok=True)
        by_source: dict[str, list] = {}
        for page in pages:
            by_source.setdefault(page["source"], []).append(page)
        names = _output_names(list(by_source))
        for source, source_pages in by_source.items():
            atomic_write_json(output / names[source], {"source": source, "pages": source_pages})
        if failures:
            atomic_write_json(output / "failed.json", {"failed": failures})
    else:
        document = {"pages": pages, "failed": failures, "summary": summary}
        if output is not None:
            atomic_write_json(output, document)
        else:
            json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
            sys.stdout.write("\n")
    print(f"xformparser parse: {summary['pages']} page(s) parsed, {summary['failed']} failed "
          f"({summary['seconds']:.1f} s)" + (f"; output in {output}" if output else ""), file=sys.stderr)
    return 1 if failures else 0


__all__ = ["register", "run"]
