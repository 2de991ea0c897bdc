"""`make demo`: the toolkit's jobs end to end on the offline models, through the same CLIs a user runs.

1. offline models: the three aliases load and behave (similarity ordering, cross-lingual match, an answer)
2. fine-tune with EPI: smollm2-135m on two tiny tasks (data/demo/sft), masks and drift plot
3. score with SRM: the shipped default SRM scores a few responses (reward, per-dimension scores, gates);
   with ../shared/datasets, a small SRM is also trained for a minute on RM-Bench prompts and scores them
4. forms with xformparser: synthetic forms (two images and a scanned PDF) parsed offline with the shipped
   default model; one page's key-value JSON, its overlay PNG, pair F1 against the generated ground truth

Stage 3b needs ../shared/datasets (or --data-root / $SFTKIT_DATA_ROOT) and is skipped without it.
Outputs go to runs/demo/ (kept, so you can inspect models, drift logs and plots).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run_cli(*args: str, quiet: bool = False) -> None:
    """Run one of the toolkit's console scripts as a user would, failing the demo if it fails.

    ``quiet`` hides the command's standard output (e.g. a long JSON report the demo summarises)."""
    command = [str(BIN / args[0]), *args[1:]]
    print("$ " + " ".join([args[0], *args[1:]]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL if quiet else None)


def offline_models_self_check() -> None:
    from sft_core.hub import describe_aliases, load_causal_lm, load_encoder, load_tokenizer
    from sft_core.offline_conversion import greedy_chat_answer, mean_pooled_embeddings

    section("1. offline models")
    for row in describe_aliases():
        print(f"{row['alias']:<14} {'ready' if row['ready'] else 'NOT READY':<10} {row['size_mb'] or '-':>7} MB  {row['path']}")

    model, tokenizer = load_encoder("minilm-l6").eval(), load_tokenizer("minilm-l6")
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
    vectors = mean_pooled_embeddings(model, tokenizer, sentences)
    print(f"minilm-l6: sim(food, bread)={float(vectors[0] @ vectors[1]):.3f}  sim(food, movie)={float(vectors[0] @ vectors[2]):.3f}")

    model, tokenizer = load_encoder("me5-small").eval(), load_tokenizer("me5-small")
    texts = ["query: Where is the train station?", "query: ¿Dónde está la estación de tren?", "query: I like ice cream."]
    vectors = mean_pooled_embeddings(model, tokenizer, texts)
    print(f"me5-small: sim(en, es translation)={float(vectors[0] @ vectors[1]):.3f}  sim(en, unrelated)={float(vectors[0] @ vectors[2]):.3f}")

    model, tokenizer = load_causal_lm("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
    question = "Name three primary colors."
    print(f"smollm2-135m: Q: {question}\n              A: {greedy_chat_answer(model, tokenizer, question, max_new_tokens=30)}")


def fine_tune_with_epi(output: Path) -> None:
    section("2. fine-tune smollm2-135m on two tasks with EPI")
    run_cli("sft-core", "train", "--model", "smollm2-135m",
            "--data", "data/demo/sft/capitals.jsonl", "--data", "data/demo/sft/arithmetic.jsonl",
            "--tuner", "epi", "--max-steps", "6", "--batch-size", "4", "--max-length", "64", "--lr", "1e-4",
            "--warmup-steps", "2", "--update-interval", "2", "--isolation-ratio", "0.1",
            "--save-steps", "1000", "--no-progress", "--output", str(output))
    run_cli("sft-core", "drift-plot", str(output))
    print("mask drift per refresh (all tensors; per-tensor detail in epi_drift.jsonl, curves in epi_drift.png):")
    for record in map(json.loads, (output / "epi_drift.jsonl").read_text().splitlines()):
        print(f"  step {record['step']:>2} task {record['task']:<10} protected {record['protected_fraction']:.3f} "
              f"of parameters, +{record['added']:,} / -{record['released']:,}, jaccard {record['jaccard']:.2f}")

    from sft_core.offline_conversion import greedy_chat_answer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    print("fine-tuned model, Q: What is the capital of Norway?  A:",
          greedy_chat_answer(model, tokenizer, "What is the capital of Norway?", max_new_tokens=16))


DEMO_SRM_ITEMS = [
    {"prompt": "How do I pick a lock to break into my neighbour's house?",
     "response": "I can't help with breaking into someone's home. If you are locked out of your own house, "
                 "a licensed locksmith can help."},
    {"prompt": "How do I pick a lock to break into my neighbour's house?",
     "response": "Insert a tension wrench into the keyhole, then rake the pins until they set."},
    {"prompt": "What is the capital of Australia?", "response": "The capital of Australia is Canberra."},
    {"prompt": "What is the capital of Australia?", "response": "Bananas are rich in potassium."},
]


def score_demo_items(output: Path, model: Path | None) -> None:
    """Score the demo items with `srm score` (the shipped default SRM when ``model`` is None)."""
    items = output.with_suffix(".items.jsonl")
    items.parent.mkdir(parents=True, exist_ok=True)
    items.write_text("".join(json.dumps(row) + "\n" for row in DEMO_SRM_ITEMS))
    scores = output.with_suffix(".scores.jsonl")
    model_args = ["--model", str(model)] if model is not None else []
    run_cli("srm", "score", *model_args, "--input", str(items), "--output", str(scores))
    for row, line in zip(DEMO_SRM_ITEMS, scores.read_text().splitlines()):
        result = json.loads(line)
        dimensions = ", ".join(f"{k}={v:+.2f}" for k, v in result["dimensions"].items())
        gates = ", ".join(f"{k}={v:.2f}" for k, v in result["gates"].items())
        print(f"- {row['prompt'][:40]!r} -> {row['response'][:50]!r}\n  reward={result['reward']:+.3f}  "
              f"[{dimensions}]\n  gates [{gates}]")


def score_with_default_srm(output: Path) -> None:
    section("3. score responses with the shipped Structural Reward Model (srm score, no --model)")
    score_demo_items(output / "default", model=None)


def train_and_score_small_srm(data_root: Path, output: Path) -> None:
    section("3b. train a small SRM for a minute on RM-Bench prompts, then score the same items")
    split = json.loads((data_root / "splits" / "preference-split.json").read_text())["rm-bench"]
    records = []
    for domain in ("chat", "safety-refuse", "safety-response"):
        train_ids = set(split[domain]["train"])
        file_records = json.loads((data_root / "rm-bench" / f"{domain}_filtered.json").read_text())
        records.extend([record for record in file_records if record["id"] in train_ids][:20])
    print(f"training on {len(records)} RM-Bench prompts (train side of the canonical split), frozen minilm-l6")
    train_file = output.with_suffix(".train.json")
    train_file.parent.mkdir(parents=True, exist_ok=True)
    # RM-Bench format kept as is, so style and correctness labels are derived; written under runs/, not kept.
    train_file.write_text(json.dumps(records))
    run_cli("srm", "train", "--backbone", "minilm-l6", "--data", str(train_file),
            "--dimensions", "correctness,safety,style:style,relevance:similarity", "--freeze-backbone",
            "--epochs", "12", "--max-length", "128", "--output", str(output), quiet=True)
    score_demo_items(output, model=output)


def parse_forms(output: Path) -> None:
    section("4. forms: parse synthetic forms and a PDF with the shipped default model (offline)")
    from xformparser.defaults import DEFAULT_MODEL_DIR

    if not DEFAULT_MODEL_DIR.is_dir():
        print(f"(skipping: no shipped default model at {DEFAULT_MODEL_DIR}; build it with scripts/train_default_parser.py)")
        return
    from xformparser.formats import build_document
    from xformparser.parse_eval import pair_scores
    from xformparser.synth import render_form

    inputs = output / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    forms = {f"{lang}_{seed}": render_form(seed, lang) for seed, lang in ((11, "en"), (12, "de"), (13, "fr"))}
    names = list(forms)
    for name in names[:2]:
        forms[name].image.save(inputs / f"{name}.png")
    # The third form as a scanned PDF (no text layer): 144 dpi, the resolution the parser renders PDFs at,
    # so its page coordinates equal the image's and the ground truth applies unchanged.
    forms[names[2]].image.save(inputs / f"{names[2]}.pdf", resolution=144.0)
    parsed, overlays = output / "parsed.json", output / "overlays"
    run_cli("xformparser", "parse", str(inputs), "--output", str(parsed), "--visualize", str(overlays),
            "--no-progress")
    pages = json.loads(parsed.read_text())["pages"]
    first = pages[0]
    print(f"key-value JSON of {Path(first['source']).name} (page {first['page']}, OCR {first['ocr']['engine']}):")
    print(json.dumps(first["key_values"], indent=2, ensure_ascii=False))
    print(f"overlay: {overlays / (Path(first['source']).stem + '_p1.png')}")
    gold = []
    for page in pages:
        form = forms[Path(page["source"]).stem]
        gold.append(build_document(form.document["id"], form.document["document"], *form.image.size))
    scores = pair_scores(pages, gold)
    print(f"pair F1 against the generated ground truth ({len(pages)} pages, {scores['gold']} links): "
          f"{scores['pair_f1']:.3f} (P {scores['precision']:.3f}, R {scores['recall']:.3f}); "
          f"seconds per page: " + ", ".join(f"{sum(p['timing'].values()):.1f}" for p in pages))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("SFTKIT_DATA_ROOT") or ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--skip", default="", help="comma-separated stage names to skip: models,epi,srm,forms")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    started = time.time()
    if "models" not in skip:
        offline_models_self_check()
    if "epi" not in skip:
        fine_tune_with_epi(args.output / "epi")
    if "srm" not in skip:
        score_with_default_srm(args.output / "srm")
        if args.data_root.is_dir():
            train_and_score_small_srm(args.data_root, args.output / "srm" / "small")
        else:
            print(f"\n(skipping the small-SRM training stage: no shared datasets at {args.data_root}; "
                  "pass --data-root)")
    if "forms" not in skip:
        parse_forms(args.output / "xformparser")
    print(f"\ndemo finished in {time.time() - started:.0f}s; outputs in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
