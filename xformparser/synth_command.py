"""``xformparser synth``: render synthetic multilingual forms with XFUND ground truth.

    xformparser synth --n 20 --langs en,de,fr,es,it,pt,zh,ja --out data/synth --seed 0

writes ``DIR/images/<lang>_<i>.jpg`` and one XFUND file ``DIR/<lang>.json`` per language (``--n`` forms per
language) and prints a JSON summary on stdout. See :mod:`xformparser.synth` for what the forms hold.
"""

from __future__ import annotations

import argparse
import json
import sys

from .synth import LANGUAGES, FontNotFoundError, generate_dataset, parse_languages


def register(subparsers) -> None:
    """Add the ``synth`` subcommand to the xformparser CLI's subparsers."""
    parser = subparsers.add_parser(
        "synth", help="render synthetic multilingual forms (images + XFUND ground truth)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, required=True, help="forms per language")
    parser.add_argument("--langs", default=",".join(LANGUAGES), help="comma-separated languages")
    parser.add_argument("--out", required=True, help="output folder (images/ and <lang>.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=1.0, help="scan-noise strength (0 = clean pages)")
    parser.add_argument("--jpeg-quality", type=int, default=85, help="quality of the saved JPEG images")


def run(args) -> int:
    if args.n < 1:
        print(f"xformparser synth: error: --n must be at least 1, got {args.n}", file=sys.stderr)
        return 2
    if not 1 <= args.jpeg_quality <= 100:
        print(f"xformparser synth: error: --jpeg-quality must be 1..100, got {args.jpeg_quality}", file=sys.stderr)
        return 2
    try:
        langs = parse_languages(args.langs)
        summary = generate_dataset(args.out, args.n, langs, seed=args.seed, noise=args.noise,
                                   jpeg_quality=args.jpeg_quality, progress=True)
    except (ValueError, FontNotFoundError) as error:
        print(f"xformparser synth: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0
