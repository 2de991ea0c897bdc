"""FUNSD sweep for xformparser's full-fine-tuning recipe: learning rates, budgets, seeds and budget-matched
ablations, run as parallel worker processes that share one accelerator, with dev-set model selection.

    # 1. here (fonts installed): the synthetic training forms + FUNSD page sizes, for a machine without fonts/images
    python benchmarks/xformparser_sweep.py --write-synthetic-docs runs/xformparser_sweep_docs.json.xz
    # 2. the sweep (GPU machine: a backbone directory, FUNSD annotations only, the file from step 1)
    python benchmarks/xformparser_sweep.py --grid gpu --device cuda --jobs 6 --time-budget 400 \\
        --backbone /tmp/w/minilm-l6 --data-root /tmp/data --synthetic-docs runs/xformparser_sweep_docs.json.xz --out $OUT
    # 3. here: publish docs/results/xformparser_sweep.{json,md} and the recipe summary of xformparser_funsd.json
    python benchmarks/xformparser_sweep.py --report path/to/sweep.json

Protocol (as benchmarks/xformparser_funsd.py): the 149 FUNSD training forms sorted by file name are split
134 train / 15 dev; the training set also holds the recipe's 10 synthetic forms (xformparser.synth, 2 per
language in en/de/fr/es/it, synth seed 42); every run keeps its best epoch by the dev score (mean of SER
micro-F1 and end-to-end RE F1) and is scored on the 50 FUNSD test forms with gold entity boxes (SER micro-F1,
token seqeval, RE with gold labels, RE end to end, line splitting). Training and scoring go through the
entry points a user calls: ``train_parser(TrainingOptions(...))`` and ``FormParser.from_pretrained(...)
.evaluate(...)``. The recipe is chosen on the dev set only (highest mean dev score over seeds among the
configurations with the most finished seeds); its test scores are then reported as mean and std over seeds.

Scheduling: the run queue is ordered by priority (the best-guess recipe's 3 seeds, one seed of every other
learning-rate/epoch point, more seeds for the best of those on dev, the budget-matched ablations at 3 seeds,
the remaining seeds, extra variants). A run is started only if its estimated duration (from finished runs,
else ``--prior-epoch-seconds``) ends within ``--time-budget``; a run that does not fit is passed over for a
shorter one. Every finished run is saved at once: ``OUT/sweep.json`` (everything, rewritten atomically after
each run) and ``OUT/sweep.log`` (one line per run, also on stderr). Model folders, per-run JSON files and
worker logs go to ``--work-dir`` (models are deleted after scoring unless ``--keep-models``).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

DEV_DOCUMENTS = 15
SYNTH_SEED = 42
SYNTH_PER_LANGUAGE = 2
SYNTH_LANGS = ("en", "de", "fr", "es", "it")
SYNTH_LABELS = ("header", "question", "answer", "other")
METRICS = ("ser_micro_f1", "seqeval_f1", "re_f1_gold_labels", "re_f1_end_to_end")
EXTRA_METRICS = ("joint_ser_micro_f1", "joint_re_f1_end_to_end", "line_split_exact", "line_split_boundaries")
TARGETS = {"ser_micro_f1": 0.85, "seqeval_f1": 0.60, "re_f1_gold_labels": 0.95, "re_f1_end_to_end": 0.75}
DOCS_FORMAT = "xformparser-sweep-documents/1"
SAFETY_FACTOR = 1.15  # estimated run seconds are scaled by this before checking they fit the budget


# ----------------------------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class RunConfig:
    """One training configuration; the seeds of a configuration are separate runs."""

    name: str
    group: str  # "recipe" | "sweep" | "ablation" | "variant"
    encoder_lr: float = 1e-4
    head_lr: float = 1e-3
    epochs: float = 4.0
    max_steps: int = -1
    model_options: dict = field(default_factory=dict, hash=False, compare=False)
    change: str = ""

    @property
    def cost_units(self) -> float:
        """What the run's duration scales with: optimizer steps when capped, else epochs."""
        return float(self.max_steps) if self.max_steps > 0 else float(self.epochs)


@dataclass(frozen=True)
class RunSpec:
    config: RunConfig
    seed: int
    stage: int  # lower runs first

    @property
    def name(self) -> str:
        return f"{self.config.name}_seed{self.seed}"


def _lr_name(value: float) -> str:
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e-{int(exponent[1:])}" if exponent.startswith("-") else f"{value:g}"


def config_name(encoder_lr: float, epochs: float, suffix: str = "") -> str:
    return f"lr{_lr_name(encoder_lr)}_ep{epochs:g}" + (f"_{suffix}" if suffix else "")


# Budget-matched ablations of the recipe (same learning rates and epochs); keys are XFormParserConfig options.
ABLATIONS = {
    "no_re_context": ({"use_bilstm": False},
                      "no entity context before the RE head/tail MLPs (`--no-bilstm`; the context is neighbour "
                      "attention in the current model, the Bi-LSTM in the earlier protocol)"),
    "no_ser_context": ({"use_ser_context": False},
                       "no entity context before the SER MLP (each entity labelled from its own tokens and box)"),
    "no_label_embedding": ({"use_label_embedding": False}, "no SER label embedding in the RE input (`--no-label-embedding`)"),
    "no_geometric_features": ({"use_geometric_features": False}, "no geometric pair features (`--no-geometric-features`)"),
}
# Additions that may help (token-level context for the BIO head, the older Bi-LSTM entity context).
VARIANTS = {
    "token_bilstm": ({"use_token_context": True}, "with the token Bi-LSTM feeding the BIO head"),
    "bilstm_context": ({"context_kind": "bilstm"}, "Bi-LSTM over entities in reading order instead of neighbour attention"),
    "bio_weight_1": ({"bio_loss_weight": 1.0}, "token BIO loss weight 1.0 (recipe: 0.5)"),
    "frozen_bottom2": ({"frozen_layers": 2}, "embeddings + bottom 2 encoder layers frozen (layout added at layer 2, "
                                             "at the head lr), as in the earlier best run"),
}
GRIDS = ("gpu", "smoke", "cpu_ablations")


def build_grid(grid: str) -> list[RunSpec]:
    """All runs of a grid in priority order (stage, then position). The best-guess recipe comes first."""
    if grid == "cpu_ablations":
        # What a shared 2-core CPU affords: the budget-matched ablations at the 4-epoch point (lr 1e-4) beside
        # the same point trained again on the same machine, seed by seed. Names start with "cpu_" so a report
        # can merge them with an accelerator sweep.
        base = RunConfig("cpu_lr1e-4_ep4", "sweep", encoder_lr=1e-4, epochs=4.0,
                         change="4-epoch point again on the CPU machine (baseline of the CPU ablations)")
        ablations = [RunConfig(f"cpu_lr1e-4_ep4_{suffix}", "ablation", encoder_lr=1e-4, epochs=4.0,
                               model_options=options, change=change + ", 4 epochs, CPU machine")
                     for suffix, (options, change) in ABLATIONS.items()]
        return [RunSpec(config, seed, stage) for stage, seed in enumerate((42, 43, 44), start=1)
                for config in (base, *ablations)]  # seed-major: a cut-off budget still leaves whole seeds
    if grid == "gpu":
        # The CPU recipe was 4 epochs at 1e-4 (what a shared 2-core machine allowed); the best guess is a longer
        # budget at the same rate.
        learning_rates, epoch_points, seeds = (5e-5, 1e-4, 2e-4), (4.0, 10.0), (42, 43, 44)
        recipe_lr, recipe_epochs = 1e-4, 10.0
        make = lambda lr, ep, group, suffix="", options=None, change="": RunConfig(  # noqa: E731
            config_name(lr, ep, suffix), group, encoder_lr=lr, epochs=ep, model_options=options or {}, change=change)
    elif grid == "smoke":
        # A few optimizer steps per run: checks the machinery end to end on CPU in minutes, measures nothing.
        learning_rates, epoch_points, seeds = (1e-4, 2e-4), (1.0,), (42, 43)
        recipe_lr, recipe_epochs = 1e-4, 1.0
        make = lambda lr, ep, group, suffix="", options=None, change="": RunConfig(  # noqa: E731
            config_name(lr, ep, suffix) + "_steps3", group, encoder_lr=lr, epochs=ep, max_steps=3,
            model_options=options or {}, change=change)
    else:
        raise ValueError(f"unknown grid {grid!r}; choose from {GRIDS}")
    recipe = make(recipe_lr, recipe_epochs, "recipe", change="best-guess recipe")
    others = [make(lr, ep, "sweep", change="learning-rate / budget point")
              for ep in epoch_points for lr in learning_rates if (lr, ep) != (recipe_lr, recipe_epochs)]
    ablations = [make(recipe_lr, recipe_epochs, "ablation", suffix, options, change)
                 for suffix, (options, change) in ABLATIONS.items()]
    variants = [make(recipe_lr, recipe_epochs, "variant", suffix, options, change)
                for suffix, (options, change) in VARIANTS.items()]
    if grid == "smoke":
        ablations, variants = ablations[-1:], []
    first, rest = seeds[0], seeds[1:]
    specs = [RunSpec(recipe, seed, 1) for seed in seeds]
    specs += [RunSpec(config, first, 2) for config in others]
    specs += [RunSpec(config, seed, 4) for seed in seeds for config in ablations]  # seed-major: 3 ablations early
    specs += [RunSpec(config, seed, 5) for seed in rest for config in others]
    specs += [RunSpec(config, seed, 6) for seed in seeds for config in variants]
    names = [spec.name for spec in specs]
    assert len(names) == len(set(names)), "run names must be unique"
    return specs


# ------------------------------------------------------------------------------------ queue and budget
class Scheduler:
    """Chooses the next run: highest priority first, only if it is estimated to end within the budget.

    A sweep configuration whose first seed beats the recipe's mean dev score gets its other seeds moved up
    (stage 3, before the ablations): the selection then compares configurations with equal seed counts."""

    def __init__(self, specs: list[RunSpec], budget_seconds: float, prior_seconds_per_unit: float):
        self.pending = list(specs)
        self.budget_seconds = budget_seconds
        self.prior_seconds_per_unit = prior_seconds_per_unit
        self.finished: list[dict] = []  # {"spec", "seconds", "dev_score"}
        self.passed_over: dict[str, str] = {}

    def record(self, spec: RunSpec, seconds: float, dev_score: float | None) -> None:
        self.finished.append({"spec": spec, "seconds": seconds, "dev_score": dev_score})

    def estimate(self, spec: RunSpec) -> float:
        """Seconds the run should take: the median of the same configuration's runs; else a line
        seconds = fixed + per_unit * units through the finished runs (start-up and scoring are the fixed
        part) when they span two budgets; else seconds per unit of what finished; else the prior."""
        units = spec.config.cost_units
        same = [f["seconds"] for f in self.finished if f["spec"].config == spec.config]
        if same:
            return statistics.median(same)
        points = [(f["spec"].config.cost_units, f["seconds"]) for f in self.finished]
        if len({x for x, _ in points}) >= 2:
            mean_x = statistics.mean(x for x, _ in points)
            mean_y = statistics.mean(y for _, y in points)
            slope = (sum((x - mean_x) * (y - mean_y) for x, y in points)
                     / sum((x - mean_x) ** 2 for x, _ in points))
            if slope > 0:
                return max(mean_y + slope * (units - mean_x), 0.0)
        if points:
            return statistics.median(y / x for x, y in points) * units
        return self.prior_seconds_per_unit * units

    def _dev_means(self) -> dict[str, float]:
        scores: dict[str, list[float]] = {}
        for f in self.finished:
            if f["dev_score"] is not None:
                scores.setdefault(f["spec"].config.name, []).append(f["dev_score"])
        return {name: statistics.mean(values) for name, values in scores.items()}

    def ordered(self) -> list[RunSpec]:
        means = self._dev_means()
        recipe_mean = next((means[s.config.name] for s in (f["spec"] for f in self.finished)
                            if s.config.group == "recipe" and s.config.name in means), None)

        def key(item):
            position, spec = item
            stage = spec.stage
            if spec.config.group == "sweep" and stage == 5 and recipe_mean is not None:
                mean = means.get(spec.config.name)
                best_sweep = max((v for n, v in means.items() if any(
                    f["spec"].config.name == n and f["spec"].config.group == "sweep" for f in self.finished)), default=None)
                if mean is not None and mean > recipe_mean and mean == best_sweep:
                    stage = 3
            # Within a stage keep the grid's order, except that stage-5 seeds go to the better configs first.
            tie = -means.get(spec.config.name, 0.0) if stage == 5 else 0.0
            return stage, tie, position

        return [spec for _, spec in sorted(enumerate(self.pending), key=key)]

    def next_run(self, elapsed_seconds: float) -> RunSpec | None:
        for spec in self.ordered():
            needed = self.estimate(spec) * SAFETY_FACTOR
            if elapsed_seconds + needed <= self.budget_seconds:
                self.pending.remove(spec)
                self.passed_over.pop(spec.name, None)
                return spec
            self.passed_over[spec.name] = (f"estimated {needed:.0f} s would end at {elapsed_seconds + needed:.0f} s, "
                                           f"after the {self.budget_seconds:.0f} s budget")
        return None


# -------------------------------------------------------------------------------------------- selection
def _mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0, "n": len(values)}


def config_table(runs: list[dict]) -> list[dict]:
    """One row per configuration: dev and test means/stds over its finished seeds."""
    by_config: dict[str, list[dict]] = {}
    for run in runs:
        by_config.setdefault(run["config"]["name"], []).append(run)
    rows = []
    for name, members in by_config.items():
        members.sort(key=lambda r: r["seed"])
        rows.append({
            "config": name, "group": members[0]["config"]["group"], "change": members[0]["config"].get("change", ""),
            "encoder_lr": members[0]["config"]["encoder_lr"], "head_lr": members[0]["config"]["head_lr"],
            "epochs": members[0]["config"]["epochs"], "max_steps": members[0]["config"].get("max_steps", -1),
            "model_options": members[0]["config"].get("model_options", {}),
            "seeds": [r["seed"] for r in members],
            "dev_score": _mean_std([r["dev"]["selection_f1"] for r in members]),
            "dev": {m: _mean_std([r["dev"][m] for r in members]) for m in METRICS},
            "test": {m: _mean_std([r["scores"][m] for r in members]) for m in (*METRICS, *EXTRA_METRICS)},
            "run_seconds": _mean_std([r["seconds"] for r in members]),
            "train_seconds_per_epoch": _mean_std([r["budget"]["train_runtime_seconds"] / r["budget"]["epochs"]
                                                  for r in members if r["budget"].get("epochs")] or [0.0]),
        })
    return rows


CLI_FLAGS = {  # model option -> `xformparser train` flag that sets it (value -> flag text)
    "use_bilstm": lambda v: "" if v else "--no-bilstm",
    "use_label_embedding": lambda v: "" if v else "--no-label-embedding",
    "use_geometric_features": lambda v: "" if v else "--no-geometric-features",
    "use_ser_context": lambda v: "" if v else "--no-ser-context",
    "use_token_context": lambda v: "--token-context" if v else "",
    "context_kind": lambda v: f"--context-kind {v}",
    "bio_loss_weight": lambda v: f"--bio-loss-weight {v:g}",
    "frozen_layers": lambda v: f"--frozen-layers {v}",
}


def train_command(config: dict) -> str:
    """The `xformparser train` command line with a configuration's settings (data paths as placeholders)."""
    flags = [CLI_FLAGS[key](value) for key, value in sorted(config.get("model_options", {}).items())]
    steps = f" --max-steps {config['max_steps']}" if config.get("max_steps", -1) > 0 else ""
    return (f"xformparser train --train TRAIN --eval DEV --output MODEL_DIR --epochs {config['epochs']:g}{steps} "
            f"--lr {config['encoder_lr']:g} --head-lr {config['head_lr']:g}" + "".join(f" {f}" for f in flags if f))


def select_recipe(runs: list[dict]) -> dict | None:
    """The configuration with the highest mean dev score among those with the most finished seeds
    (test scores play no part). Returns its config-table row plus how it was chosen."""
    rows = config_table(runs)
    if not rows:
        return None
    most = max(len(row["seeds"]) for row in rows)
    candidates = [row for row in rows if len(row["seeds"]) == most]
    best = max(candidates, key=lambda row: row["dev_score"]["mean"])
    best["train_command"] = train_command(best)
    return {**best, "selection": f"highest mean dev score (mean of SER micro-F1 and end-to-end RE F1 on the 15 dev "
                                 f"forms) among the {len(candidates)} configurations with {most} finished seeds"}


# ------------------------------------------------------------------------------ documents (prepared here)
def documents_to_json(documents) -> list[dict]:
    records = []
    for document in documents:
        record = asdict(document)
        record["image_path"] = None  # pages are not carried: the sweep runs without the image branch
        records.append(record)
    return records


def documents_from_json(records) -> list:
    from xformparser.formats import Document, Entity, Word

    return [Document(doc_id=r["doc_id"], links=[tuple(link) for link in r["links"]], width=r["width"], height=r["height"],
                     image_path=None, language=r.get("language"),
                     entities=[Entity(id=e["id"], text=e["text"], box=e["box"], label=e["label"],
                                      words=[Word(**w) for w in e["words"]]) for e in r["entities"]])
            for r in records]


def read_json_maybe_xz(path) -> dict:
    path = Path(path)
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def write_prepared_documents(path, data_root) -> dict:
    """Synthetic forms of the recipe (needs the synth fonts) and FUNSD's page sizes (from its images: without
    them the reader falls back to the boxes' extent, which would change every normalised box)."""
    from xformparser.formats import load_documents
    from xformparser.training import synthetic_training_documents

    with tempfile.TemporaryDirectory(prefix="xformparser_synth_") as scratch:
        synth = synthetic_training_documents(scratch, SYNTH_PER_LANGUAGE, SYNTH_LANGS, SYNTH_SEED,
                                             allowed_labels=set(SYNTH_LABELS))
    page_sizes = {}
    for split in ("training_data", "testing_data"):
        for document in load_documents(Path(data_root) / "funsd" / split):
            if not document.image_path:
                raise FileNotFoundError(f"FUNSD {split}/{document.doc_id}: no page image under {data_root}; "
                                        "the page sizes must come from the images")
            page_sizes[f"{split}/{document.doc_id}"] = [document.width, document.height]
    payload = {"format": DOCS_FORMAT, "synth": {"per_language": SYNTH_PER_LANGUAGE, "langs": list(SYNTH_LANGS),
                                                "seed": SYNTH_SEED},
               "synthetic_documents": documents_to_json(synth), "funsd_page_sizes": page_sizes}
    data = json.dumps(payload, separators=(",", ":")).encode()
    if str(path).endswith(".xz"):
        data = lzma.compress(data, preset=9)
    from sft_core.atomic_io import atomic_write_bytes

    atomic_write_bytes(Path(path), data)
    return {"path": str(path), "bytes": len(data), "synthetic_documents": len(synth), "page_sizes": len(page_sizes)}


def load_funsd_split(data_root, split: str, page_sizes: dict | None):
    """FUNSD documents of one split; page sizes from the prepared file where the images are absent."""
    from xformparser.formats import load_documents

    documents = load_documents(Path(data_root) / "funsd" / split)
    if page_sizes:
        for document in documents:
            key = f"{split}/{document.doc_id}"
            if key not in page_sizes:
                raise ValueError(f"{key}: no page size in the prepared documents file")
            width, height = page_sizes[key]
            if document.image_path and (document.width, document.height) != (width, height):
                raise ValueError(f"{key}: page size {document.width}x{document.height} from its image differs from "
                                 f"the prepared file's {width}x{height}")
            document.width, document.height = float(width), float(height)
    return documents


# ---------------------------------------------------------------------------------------------- worker
def _funsd_benchmark():
    """benchmarks/xformparser_funsd.py (the protocol's headline metrics and its results page)."""
    try:
        import benchmarks.xformparser_funsd as funsd_benchmark
    except ImportError:  # run as a script: benchmarks/ is not a package on sys.path
        sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
        import xformparser_funsd as funsd_benchmark
    return funsd_benchmark


def run_one(spec: RunSpec, data: dict, settings: dict) -> dict:
    """Train one run with the user entry points, score it on FUNSD test, delete its model folder."""
    import torch

    from xformparser.evaluation import FormParser
    from xformparser.training import TrainingOptions, train_parser

    started = time.time()
    output_dir = Path(settings["work_dir"]) / "models" / spec.name
    if output_dir.exists():
        shutil.rmtree(output_dir)
    config = spec.config
    options = TrainingOptions(
        train_path="funsd/training_data[:134] + synthetic", eval_path="funsd/training_data[134:]",
        output_dir=str(output_dir), backbone=settings["backbone"], seed=spec.seed, epochs=config.epochs,
        max_steps=config.max_steps, learning_rate=config.encoder_lr, head_learning_rate=config.head_lr,
        model_options=dict(config.model_options), logging_steps=1000, show_progress=False, device=settings["device"])
    summary = train_parser(options, train_documents=data["train"], eval_documents=data["dev"])
    parser = FormParser.from_pretrained(output_dir, batch_size=4)
    parser.model.to(settings["device"])
    test_report = parser.evaluate(data["test"])
    dev_report = summary["eval_report"]
    if not settings.get("keep_models"):
        shutil.rmtree(output_dir, ignore_errors=True)
    if settings["device"] == "cuda":
        torch.cuda.empty_cache()
    headline = _funsd_benchmark().headline
    return {
        "name": spec.name, "config": {**asdict(config)}, "seed": spec.seed, "stage": spec.stage,
        "budget": {"optimizer_steps": summary["global_steps"], "epochs": round(summary["epochs"] or 0, 3),
                   "train_documents": summary["train_documents"], "train_wall_seconds": summary["wall_seconds"],
                   "train_runtime_seconds": summary["train_runtime_seconds"], "train_cpu_seconds": summary["train_cpu_seconds"],
                   "best_checkpoint": Path(summary.get("best_checkpoint") or "").name},
        "dev": {**{k: v for k, v in headline(dev_report).items() if k in METRICS}, "selection_f1": dev_report["f1"]},
        "scores": headline(test_report), "test": test_report,
        "seconds": round(time.time() - started, 1),
    }


def load_run_data(settings: dict) -> dict:
    prepared = read_json_maybe_xz(settings["synthetic_docs"]) if settings.get("synthetic_docs") else None
    if prepared is not None and prepared.get("format") != DOCS_FORMAT:
        raise ValueError(f"{settings['synthetic_docs']}: not a file written by --write-synthetic-docs")
    page_sizes = prepared["funsd_page_sizes"] if prepared else None
    train_all = sorted(load_funsd_split(settings["data_root"], "training_data", page_sizes), key=lambda d: d.doc_id)
    test = load_funsd_split(settings["data_root"], "testing_data", page_sizes)
    if prepared is not None:
        synth = documents_from_json(prepared["synthetic_documents"])
    else:
        from xformparser.training import synthetic_training_documents

        synth = synthetic_training_documents(Path(settings["work_dir"]) / "synth", SYNTH_PER_LANGUAGE, SYNTH_LANGS,
                                             SYNTH_SEED, allowed_labels=set(SYNTH_LABELS))
    return {"train": train_all[:-DEV_DOCUMENTS] + synth, "dev": train_all[-DEV_DOCUMENTS:], "test": test,
            "counts": {"funsd_train": len(train_all) - DEV_DOCUMENTS, "synthetic": len(synth),
                       "dev": DEV_DOCUMENTS, "test": len(test)}}


def worker_main(worker_id: int, settings: dict, inbox, outbox) -> None:
    """A worker process: loads the data once, then trains what the parent sends until it sends None."""
    # Before torch loads: each worker keeps to its share of the CPU cores.
    os.environ["OMP_NUM_THREADS"] = str(settings["threads_per_job"])
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    log_path = Path(settings["work_dir"]) / "logs" / f"worker{worker_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", buffering=1, encoding="utf-8")
    sys.stdout = sys.stderr = log  # the Trainer's metric dicts and warnings: per-worker log, not the console
    import logging

    logging.basicConfig(stream=log, level=logging.WARNING)
    try:
        import torch

        torch.set_num_threads(settings["threads_per_job"])
        data = load_run_data(settings)
    except Exception as error:  # noqa: BLE001 - reported to the parent, which stops cleanly
        outbox.put(("fatal", worker_id, None, f"{type(error).__name__}: {error}", traceback.format_exc()))
        return
    outbox.put(("ready", worker_id, None, data["counts"], None))
    while True:
        spec = inbox.get()
        if spec is None:
            return
        try:
            record = run_one(spec, data, settings)
            record["worker"] = worker_id
            outbox.put(("done", worker_id, spec, record, None))
        except Exception as error:  # noqa: BLE001 - one failed run must not stop the sweep
            print(traceback.format_exc(), file=log)
            outbox.put(("failed", worker_id, spec, f"{type(error).__name__}: {error}", traceback.format_exc()[-4000:]))


# ----------------------------------------------------------------------------------------------- parent
def machine_description(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def progress_line(record: dict, done: int, total: int) -> str:
    s, d = record["scores"], record["dev"]
    return (f"[{time.strftime('%H:%M:%S')}] done {done}/{total} {record['name']}: dev {d['selection_f1']:.3f} | test SER "
            f"{s['ser_micro_f1']:.3f} seqeval {s['seqeval_f1']:.3f} RE gold {s['re_f1_gold_labels']:.3f} e2e "
            f"{s['re_f1_end_to_end']:.3f} split {s['line_split_exact']:.3f} | {record['budget']['optimizer_steps']} steps, "
            f"{record['seconds']:.0f} s (worker {record.get('worker')})")


def run_sweep(args) -> int:
    import multiprocessing as mp

    from sft_core.atomic_io import atomic_write_json
    from sft_core.hub import resolve_model

    started = time.time()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="xformparser_sweep_"))
    (work_dir / "runs").mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "sweep.log"

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    for package in ("seqeval.metrics", "datasets", "accelerate"):  # needed by training/scoring: fail before any worker starts
        try:
            __import__(package)
        except Exception as error:  # noqa: BLE001 - ImportError or a broken install: say which package
            print(f"error: python package {package.split('.')[0]!r} cannot be imported ({type(error).__name__}: {error}); "
                  "the trainer and the metrics need it", file=sys.stderr)
            return 2
    backbone = resolve_model(args.backbone)  # an alias or a local HF model directory; fails here with one line
    if not all((Path(args.data_root) / "funsd" / split).is_dir() for split in ("training_data", "testing_data")):
        print(f"error: FUNSD not found under {args.data_root}/funsd (use --data-root)", file=sys.stderr)
        return 2
    if args.synthetic_docs and not Path(args.synthetic_docs).is_file():
        print(f"error: --synthetic-docs {args.synthetic_docs}: no such file", file=sys.stderr)
        return 2
    specs = build_grid(args.grid)
    if args.only:
        wanted = set(args.only.split(","))
        specs = [s for s in specs if s.name in wanted or s.config.name in wanted]
    prior = args.prior_epoch_seconds if args.prior_epoch_seconds else (15.0 if device == "cuda" else 60.0)
    if specs and specs[0].config.max_steps > 0 and not args.prior_epoch_seconds:
        prior = 8.0 if device == "cpu" else 2.0  # per optimizer step (smoke grid), incl. scoring, rough
    scheduler = Scheduler(specs, args.time_budget, prior)
    settings = {"work_dir": str(work_dir), "backbone": backbone, "device": device, "data_root": args.data_root,
                "synthetic_docs": args.synthetic_docs, "threads_per_job": args.threads_per_job,
                "keep_models": args.keep_models}
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/xformparser_sweep.py", *args.argv])
    sweep = {"grid": args.grid, "command": command, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
             "time_budget_seconds": args.time_budget, "jobs": args.jobs, "threads_per_job": args.threads_per_job,
             "backbone": args.backbone, "data_root": args.data_root, "synthetic_docs": args.synthetic_docs,
             "machine": machine_description(device), "queue": [s.name for s in specs],
             "runs": [], "failed": [], "unfinished": [], "not_started": [], "data_counts": None}
    results_path = out_dir / "sweep.json"

    def save() -> None:
        sweep["elapsed_seconds"] = round(time.time() - started, 1)
        sweep["selected"] = select_recipe(sweep["runs"])
        atomic_write_json(results_path, sweep)

    save()
    log(f"[{time.strftime('%H:%M:%S')}] sweep {args.grid}: {len(specs)} runs queued, {args.jobs} workers on {device}, "
        f"budget {args.time_budget:.0f} s, work dir {work_dir}")
    context = mp.get_context("spawn")  # CUDA cannot be used in forked children
    outbox = context.Queue()
    workers: dict[int, dict] = {}
    for worker_id in range(args.jobs):
        inbox = context.Queue()
        process = context.Process(target=worker_main, args=(worker_id, settings, inbox, outbox), daemon=True)
        process.start()
        # status: starting -> busy (a run) <-> idle -> stopped (nothing left that fits, or it failed to start)
        workers[worker_id] = {"process": process, "inbox": inbox, "spec": None, "status": "starting", "since": None}
    total, exit_code = len(specs), 0

    def assign(worker_id: int) -> None:
        state = workers[worker_id]
        spec = scheduler.next_run(time.time() - started)
        state["spec"], state["since"] = spec, time.time()
        state["status"] = "busy" if spec is not None else "stopped"
        state["inbox"].put(spec)  # None tells the worker to exit

    import queue as queue_module

    while any(w["status"] in ("starting", "busy") for w in workers.values()):
        if time.time() - started > args.time_budget + args.grace:
            log(f"[{time.strftime('%H:%M:%S')}] budget over: stopping the workers")
            break
        try:
            kind, worker_id, spec, payload, detail = outbox.get(timeout=2.0)
        except queue_module.Empty:
            for worker_id, state in workers.items():  # a worker that died (killed, out of memory) loses its run
                if state["status"] in ("starting", "busy") and not state["process"].is_alive():
                    name = state["spec"].name if state["spec"] is not None else "(starting)"
                    sweep["failed"].append({"name": name, "error": f"worker {worker_id} exited with code "
                                                                   f"{state['process'].exitcode}"})
                    log(f"[{time.strftime('%H:%M:%S')}] FAILED {name}: worker {worker_id} died")
                    state["spec"], state["status"] = None, "stopped"
                    exit_code = 1
                    save()
            continue
        state = workers[worker_id]
        if kind == "fatal":
            log(f"[{time.strftime('%H:%M:%S')}] worker {worker_id} could not start: {payload}\n{detail}")
            state["status"] = "stopped"
            exit_code = 1
            continue
        if kind == "ready":
            sweep["data_counts"] = payload
            assign(worker_id)
            continue
        if kind == "done":
            scheduler.record(spec, payload["seconds"], payload["dev"]["selection_f1"])
            sweep["runs"].append(payload)
            atomic_write_json(work_dir / "runs" / f"{spec.name}.json", payload)
            save()
            log(progress_line(payload, len(sweep["runs"]), total))
        else:
            sweep["failed"].append({"name": spec.name, "error": payload, "traceback": detail})
            save()
            tail = "\n    ".join((detail or "").strip().splitlines()[-6:])
            log(f"[{time.strftime('%H:%M:%S')}] FAILED {spec.name}: {payload}\n    {tail}")
            exit_code = 1
        assign(worker_id)
    for worker_id, state in workers.items():
        if state["status"] == "busy" and state["spec"] is not None:
            sweep["unfinished"].append(state["spec"].name)
        if state["process"].is_alive():
            state["process"].join(timeout=0 if state["status"] == "busy" else 5)
        if state["process"].is_alive():
            state["process"].terminate()
            state["process"].join(timeout=10)
    sweep["not_started"] = [{"name": s.name, "reason": scheduler.passed_over.get(s.name, "not reached")}
                            for s in scheduler.pending]
    save()
    selected = sweep["selected"]
    log(f"[{time.strftime('%H:%M:%S')}] finished {len(sweep['runs'])}/{total} runs ({len(sweep['failed'])} failed, "
        f"{len(sweep['unfinished'])} cut off, {len(sweep['not_started'])} not started) in "
        f"{time.time() - started:.0f} s; dev-selected: {selected['config'] if selected else None}")
    if selected:
        log("  test (mean over seeds " + str(selected["seeds"]) + "): " +
            ", ".join(f"{m} {selected['test'][m]['mean']:.3f}±{selected['test'][m]['std']:.3f}" for m in METRICS))
    return exit_code if sweep["runs"] else 1


# ----------------------------------------------------------------------------------------------- report
def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_markdown(sweep: dict) -> str:
    selected = sweep.get("selected")

    def describe(part):
        where = part["machine"]
        return (f"{where.get('gpu', where['device'])} ({where.get('gpu_memory_gib', '-')} GiB), {where['cpu_count']} CPU cores, "
                f"torch {where['torch']}; {part['jobs']} runs at a time, {part['threads_per_job']} CPU threads each")

    parts = sweep.get("parts") or [sweep]
    budgets = " + ".join(f"{part['time_budget_seconds']:.0f} s" for part in parts)
    used = " + ".join(f"{part['elapsed_seconds']:.0f} s" for part in parts)
    lines = ["# xformparser sweep on FUNSD (full fine-tuning; test set 50 forms, gold entity boxes)", "",
             "Machine: " + "; then ".join(describe(part) for part in parts) + ".  ",
             f"Budget: {budgets} of wall time ({used} used); "
             f"{len(sweep['runs'])} of {len(sweep['queue'])} queued runs finished, "
             f"{len(sweep['failed'])} failed, {len(sweep['unfinished'])} cut off, {len(sweep['not_started'])} not started.  ",
             f"Data: {json.dumps(sweep.get('data_counts'))}; synthetic forms {SYNTH_PER_LANGUAGE} per language in "
             f"{'/'.join(SYNTH_LANGS)} (synth seed {SYNTH_SEED}), pre-generated with `--write-synthetic-docs`; image branch "
             "off.  ",
             "Protocol: FUNSD train 134 (+ synthetic) / dev 15 (best epoch by dev mean(SER micro-F1, end-to-end RE F1)) "
             "/ test 50. Backbone minilm-l6, whole encoder fine-tuned (word embeddings frozen), batch 2 forms, AdamW, "
             "linear decay, warm-up 10%, head lr 1e-3, layout embeddings at the encoder lr.", "",
             *([f"Command: `{sweep['command']}`"] if not sweep.get("parts") else
               ["Commands (the sweep ran in parts, merged here):", ""] +
               [f"- `{part['command']}` ({part['time_budget_seconds']:.0f} s budget, {part['elapsed_seconds']:.0f} s used, "
                f"{part['jobs']} runs at a time, {part['machine'].get('gpu', part['machine']['device'])})"
                for part in sweep["parts"]]), ""]
    if sweep.get("report_command"):
        lines += [f"Published with: `{sweep['report_command']}`", ""]
    if selected:
        lines += ["## Dev-selected recipe", "", f"**{selected['config']}** ({selected['selection']}); seeds "
                  f"{selected['seeds']}; encoder lr {selected['encoder_lr']:g}, epochs {selected['epochs']:g}, model "
                  f"options {json.dumps(selected['model_options'])}: `{selected['train_command']}`.", "",
                  "| metric (test) | mean | std | target (issue 11) |", "|---|---|---|---|"]
        for metric in (*METRICS, *EXTRA_METRICS):
            values = selected["test"][metric]
            lines.append(f"| {metric} | {_f(values['mean'])} | {_f(values['std'])} | {TARGETS.get(metric, '-')} |")
        lines.append("")
    lines += ["## Configurations (mean ± std over seeds)", "",
              "| config | group | change | seeds | dev score | SER micro-F1 | seqeval | RE gold labels | RE end to end | "
              "line split exact | s per run | train s per epoch |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"recipe": 0, "sweep": 1, "ablation": 2, "variant": 3}
    for row in sorted(config_table(sweep["runs"]), key=lambda r: (order.get(r["group"], 9), r["config"])):
        cell = lambda stat: f"{stat['mean']:.3f} ± {stat['std']:.3f}"  # noqa: E731
        lines.append(f"| {row['config']} | {row['group']} | {row['change']} | {len(row['seeds'])} | {cell(row['dev_score'])} | "
                     + " | ".join(cell(row["test"][m]) for m in (*METRICS, "line_split_exact"))
                     + f" | {row['run_seconds']['mean']:.0f} | {row['train_seconds_per_epoch']['mean']:.1f} |")
    lines += ["", "## Runs", "", "| run | seed | steps | epochs | best | dev score | SER | seqeval | RE gold | RE e2e | "
              "joint SER | joint RE e2e | line split exact / boundaries | run s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in sorted(sweep["runs"], key=lambda r: r["name"]):
        s, b = run["scores"], run["budget"]
        lines.append(f"| {run['name']} | {run['seed']} | {b['optimizer_steps']} | {b['epochs']} | {b['best_checkpoint']} | "
                     f"{_f(run['dev']['selection_f1'])} | {_f(s['ser_micro_f1'])} | {_f(s['seqeval_f1'])} | "
                     f"{_f(s['re_f1_gold_labels'])} | {_f(s['re_f1_end_to_end'])} | {_f(s['joint_ser_micro_f1'])} | "
                     f"{_f(s['joint_re_f1_end_to_end'])} | {_f(s['line_split_exact'])} / {_f(s['line_split_boundaries'])} | "
                     f"{run['seconds']:.0f} |")
    if sweep["failed"] or sweep["unfinished"] or sweep["not_started"]:
        lines += ["", "## Not finished", ""]
        lines += [f"- failed: {f['name']}: {f['error']}" for f in sweep["failed"]]
        lines += [f"- cut off at the budget: {name}" for name in sweep["unfinished"]]
        lines += [f"- not started: {n['name']} ({n['reason']})" for n in sweep["not_started"]]
    if sweep.get("notes"):
        lines += ["", "## Notes", "", *[f"- {note}" for note in sweep["notes"]]]
    return "\n".join(lines) + "\n"


def summary_for_funsd(sweep: dict, previous_summary: dict) -> dict:
    """The dev-selected recipe's means over seeds, in xformparser_funsd.json's ``summary`` shape."""
    selected = sweep["selected"]
    summary = {m: selected["test"][m]["mean"] for m in METRICS}
    summary["seeds"] = selected["seeds"]
    # Epoch seconds stay the CPU measurement of this project's machine: the sweep ran on another machine.
    for key in ("epoch_seconds_full_finetune", "epoch_cpu_seconds_full_finetune", "epoch_seconds_full_finetune_dedicated"):
        if key in previous_summary:
            summary[key] = previous_summary[key]
    summary["epoch_seconds_full_finetune_sweep_machine"] = selected["train_seconds_per_epoch"]["mean"]
    summary["epoch_seconds_note"] = (
        "epoch_seconds_full_finetune is the 2-core CPU measurement of the earlier CPU runs (see xformparser_speed.md); "
        f"the sweep ran on {sweep['machine'].get('gpu', sweep['machine']['device'])} with {sweep['jobs']} runs sharing it, "
        "where one training epoch (incl. dev evaluation and checkpoint) took "
        f"{selected['train_seconds_per_epoch']['mean']:.1f} s: a different machine, not comparable")
    summary["recipe"] = {"config": selected["config"], "encoder_lr": selected["encoder_lr"], "head_lr": selected["head_lr"],
                         "epochs": selected["epochs"], "model_options": selected["model_options"]}
    summary["selection"] = selected["selection"]
    summary["source"] = "xformparser_sweep"
    summary["spread"] = {m: {k: selected["test"][m][k] for k in ("mean", "std")} for m in (*METRICS, *EXTRA_METRICS)}
    return summary


PART_KEYS = ("command", "started_utc", "time_budget_seconds", "elapsed_seconds", "jobs", "threads_per_job", "machine")


def merge_sweeps(sweeps: list[dict]) -> dict:
    """One sweep from several runs of the script (e.g. a second run with ``--only``): runs, failures and
    queues are joined, budgets and elapsed times added; each part's command and machine are kept."""
    if len(sweeps) == 1:
        return sweeps[0]
    merged = dict(sweeps[0])
    merged["parts"] = [{key: sweep.get(key) for key in PART_KEYS} for sweep in sweeps]
    merged["runs"] = [run for sweep in sweeps for run in sweep["runs"]]
    names = [run["name"] for run in merged["runs"]]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"runs {duplicates} finished in more than one of the merged sweeps")
    finished = set(names)
    merged["failed"] = [f for sweep in sweeps for f in sweep["failed"] if f["name"] not in finished]
    merged["unfinished"] = [n for sweep in sweeps for n in sweep["unfinished"] if n not in finished]
    not_started = {}
    for sweep in sweeps:
        for item in sweep["not_started"]:
            if item["name"] not in finished:
                not_started[item["name"]] = item
    merged["not_started"] = list(not_started.values())
    merged["queue"] = list(dict.fromkeys(name for sweep in sweeps for name in sweep["queue"]))
    merged["time_budget_seconds"] = sum(sweep["time_budget_seconds"] for sweep in sweeps)
    merged["elapsed_seconds"] = sum(sweep["elapsed_seconds"] for sweep in sweeps)
    merged["command"] = " ; ".join(sweep["command"] for sweep in sweeps)
    return merged


def publish_report(sweep_paths, results_dir, argv, notes=()) -> dict:
    from sft_core.atomic_io import atomic_write_json, atomic_write_text

    if isinstance(sweep_paths, (str, Path)):
        sweep_paths = [sweep_paths]
    sweep = merge_sweeps([json.loads(Path(path).read_text()) for path in sweep_paths])
    if notes:
        sweep["notes"] = list(notes)
    sweep["selected"] = select_recipe(sweep["runs"])  # recomputed: the selection rule lives here
    if not sweep["selected"]:
        raise ValueError(f"{', '.join(map(str, sweep_paths))}: no finished runs to report")
    shown, skip = [], False  # the notes themselves are in the results, not repeated in the command
    for arg in argv:
        if skip:
            shown.append("...")
        elif arg != "--note":
            shown.append(shlex.quote(arg))
        else:
            shown.append(arg)
        skip = arg == "--note" and not skip
    sweep["report_command"] = "python " + " ".join(["benchmarks/xformparser_sweep.py", *shown])
    results_dir = Path(results_dir)
    atomic_write_json(results_dir / "xformparser_sweep.json", sweep)
    atomic_write_text(results_dir / "xformparser_sweep.md", render_markdown(sweep))
    funsd_path = results_dir / "xformparser_funsd.json"
    if funsd_path.exists():
        funsd = json.loads(funsd_path.read_text())
        previous = funsd.get("summary", {})
        if previous.get("source") != "xformparser_sweep":
            funsd["cpu_runs_summary"] = previous  # the CPU runs' own means stay beside the sweep's
        funsd["summary"] = summary_for_funsd(sweep, funsd.get("cpu_runs_summary", previous))
        atomic_write_json(funsd_path, funsd)
        atomic_write_text(results_dir / "xformparser_funsd.md", _funsd_benchmark().render_markdown(funsd))
    return sweep["selected"]


# ------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="gpu", choices=GRIDS)
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when torch sees one")
    parser.add_argument("--backbone", default="minilm-l6", help="offline alias or a local HF model directory")
    parser.add_argument("--data-root", default=os.environ.get("SFTKIT_DATA_ROOT", str(PROJECT_ROOT.parent / "shared/datasets")),
                        help="holds funsd/{training_data,testing_data}/annotations")
    parser.add_argument("--synthetic-docs", help="file written by --write-synthetic-docs (.json or .json.xz); without "
                                                 "it the synthetic forms are generated here (needs the synth fonts)")
    parser.add_argument("--write-synthetic-docs", metavar="FILE", help="write the synthetic forms and FUNSD page sizes "
                                                                       "to FILE (.json.xz: compressed) and exit")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "runs" / "xformparser_sweep"),
                        help="sweep.json + sweep.log go here")
    parser.add_argument("--work-dir", help="model folders, per-run JSON, worker logs (default: a new temp dir)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (they share the one device)")
    parser.add_argument("--threads-per-job", type=int, default=2)
    parser.add_argument("--time-budget", type=float, default=3600.0, help="seconds of wall time for the whole sweep")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds past the budget before running workers are stopped")
    parser.add_argument("--prior-epoch-seconds", type=float, help="duration estimate per epoch before any run finished")
    parser.add_argument("--only", help="comma-separated run or configuration names of the grid to run")
    parser.add_argument("--keep-models", action="store_true")
    parser.add_argument("--report", metavar="SWEEP_JSON", action="append",
                        help="publish a finished sweep into --results-dir and exit; repeat to merge several runs")
    parser.add_argument("--results-dir", default=str(PROJECT_ROOT / "docs" / "results"))
    parser.add_argument("--note", action="append", default=[], help="with --report: a note for the results (repeatable)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.jobs < 1 or args.threads_per_job < 1:
        parser.error("--jobs and --threads-per-job must be at least 1")
    if args.report:
        for path in args.report:
            if not Path(path).is_file():
                print(f"error: --report {path}: no such file", file=sys.stderr)
                return 2
        selected = publish_report(args.report, args.results_dir, argv, args.note)
        print(json.dumps({"selected": selected["config"], "seeds": selected["seeds"],
                          "test": {m: selected["test"][m] for m in METRICS}}, indent=1))
        return 0
    if args.write_synthetic_docs:
        print(json.dumps(write_prepared_documents(args.write_synthetic_docs, args.data_root)))
        return 0
    return run_sweep(args)


if __name__ == "__main__":
    from sft_core.cli_errors import run_cli

    sys.exit(run_cli(main))
