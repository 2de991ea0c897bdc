"""benchmarks/xformparser_sweep.py: run queue order, time budget, dev-set selection, report, prepared documents.

No training here: the scheduling and selection logic runs on hand-made run records."""

from __future__ import annotations

import importlib.util
import json
import lzma
import sys
from pathlib import Path

import pytest

SWEEP_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "xformparser_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("xformparser_sweep_under_test", SWEEP_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _record(sweep, spec, dev, test=None, seconds=10.0):
    test = dict.fromkeys((*sweep.METRICS, *sweep.EXTRA_METRICS), test if test is not None else dev)
    return {"name": spec.name, "config": {**sweep.asdict(spec.config)}, "seed": spec.seed,
            "budget": {"optimizer_steps": 10, "epochs": spec.config.epochs, "train_runtime_seconds": seconds / 2,
                       "best_checkpoint": "checkpoint-10"},
            "dev": {**dict.fromkeys(sweep.METRICS, dev), "selection_f1": dev},
            "scores": {**test, "line_split_spans": 3, "rule_linker_predicted_labels_f1": 0.5}, "seconds": seconds}


def test_gpu_grid_priority_order(sweep):
    specs = sweep.build_grid("gpu")
    recipe = specs[0].config
    assert [s.config for s in specs[:3]] == [recipe] * 3 and {s.seed for s in specs[:3]} == {42, 43, 44}
    assert recipe.group == "recipe"
    stages = [s.stage for s in specs]
    assert stages == sorted(stages)
    ablations = [s for s in specs if s.config.group == "ablation"]
    assert {s.config.name for s in ablations} == {f"{recipe.name}_{name}" for name in sweep.ABLATIONS}
    assert len(ablations) == 3 * len(sweep.ABLATIONS)
    # budget-matched: the recipe's learning rates and epochs, one model option changed
    assert all((s.config.encoder_lr, s.config.head_lr, s.config.epochs) == (recipe.encoder_lr, recipe.head_lr, recipe.epochs)
               and len(s.config.model_options) == 1 for s in ablations)
    sweep_points = {(s.config.encoder_lr, s.config.epochs) for s in specs if s.config.group in ("recipe", "sweep")}
    assert len(sweep_points) == 6
    first_ablation = min(i for i, s in enumerate(specs) if s.config.group == "ablation")
    assert all(s.seed == 42 for s in specs[3:first_ablation])  # one seed of every sweep point before ablations


def test_scheduler_budget_estimates_and_skips_what_does_not_fit(sweep):
    specs = sweep.build_grid("gpu")
    scheduler = sweep.Scheduler(specs, budget_seconds=100.0, prior_seconds_per_unit=5.0)
    assert specs[0].config.epochs == 10.0
    first = scheduler.next_run(0.0)  # prior: 5 s per epoch * 10 epochs * safety = 57.5 s, fits
    assert first == specs[0]
    scheduler.record(first, seconds=80.0, dev_score=0.5)  # measured: 8 s per epoch
    # 80 s * 1.15 = 92 s: a 10-epoch run no longer fits at 40 s; a 4-epoch run (32 s * 1.15) does
    chosen = scheduler.next_run(40.0)
    assert chosen.config.epochs == 4.0
    assert specs[1].name in scheduler.passed_over
    assert scheduler.next_run(99.0) is None
    assert scheduler.estimate(specs[1]) == pytest.approx(80.0)  # same configuration: its own median
    scheduler.record(chosen, seconds=50.0, dev_score=0.5)
    # two budgets measured: the line through (4 epochs, 50 s) and (10 epochs, 80 s) holds the fixed start-up part
    other_10 = next(s for s in specs if s.config.group == "sweep" and s.config.epochs == 10.0)
    other_4 = next(s for s in specs if s.config.group == "sweep" and s.config.epochs == 4.0 and s.config != chosen.config)
    assert scheduler.estimate(other_10) == pytest.approx(80.0)
    assert scheduler.estimate(other_4) == pytest.approx(50.0)


def test_scheduler_moves_up_seeds_of_a_sweep_point_that_beats_the_recipe(sweep):
    specs = sweep.build_grid("gpu")
    scheduler = sweep.Scheduler(specs, budget_seconds=1e9, prior_seconds_per_unit=1.0)
    for _ in range(3):
        spec = scheduler.next_run(0.0)
        scheduler.record(spec, 8.0, 0.60)
    sweep_firsts = [scheduler.next_run(0.0) for _ in range(5)]
    assert all(s.config.group == "sweep" and s.seed == 42 for s in sweep_firsts)
    for index, spec in enumerate(sweep_firsts):
        scheduler.record(spec, 8.0, 0.70 if index == 2 else 0.50)
    promoted = [scheduler.next_run(0.0), scheduler.next_run(0.0)]
    assert {s.config.name for s in promoted} == {sweep_firsts[2].config.name} and {s.seed for s in promoted} == {43, 44}
    assert scheduler.next_run(0.0).config.group == "ablation"


def test_selection_uses_dev_not_test_among_configs_with_most_seeds(sweep):
    specs = sweep.build_grid("gpu")
    recipe = [s for s in specs if s.config.group == "recipe"]
    other = [s for s in specs if s.config.name == specs[3].config.name]
    lucky = next(s for s in specs if s.config.group == "sweep" and s.config.name != specs[3].config.name)
    runs = [_record(sweep, s, dev=0.60, test=0.70) for s in recipe]
    runs += [_record(sweep, s, dev=0.65, test=0.60) for s in other]  # better on dev, worse on test
    runs += [_record(sweep, lucky, dev=0.99, test=0.99)]  # one seed only: not a candidate
    selected = sweep.select_recipe(runs)
    assert selected["config"] == specs[3].config.name
    assert selected["test"]["ser_micro_f1"] == {"mean": 0.6, "std": 0.0, "n": 3}
    assert "3 finished seeds" in selected["selection"]


def test_report_writes_results_and_keeps_funsd_records(sweep, tmp_path):
    specs = sweep.build_grid("gpu")[:3]
    runs = [_record(sweep, s, dev=0.6, test=value) for s, value in zip(specs, (0.7, 0.8, 0.9))]
    payload = {"grid": "gpu", "command": "python benchmarks/xformparser_sweep.py --grid gpu", "time_budget_seconds": 400,
               "elapsed_seconds": 390, "jobs": 6, "threads_per_job": 2, "queue": [s.name for s in specs] + ["x"],
               "machine": {"device": "cuda", "gpu": "Test GPU", "gpu_memory_gib": 1.0, "cpu_count": 16, "torch": "2"},
               "runs": runs, "failed": [], "unfinished": [], "not_started": [{"name": "x", "reason": "not reached"}],
               "data_counts": {"funsd_train": 134}}
    sweep_json = tmp_path / "sweep.json"
    sweep_json.write_text(json.dumps(payload))
    results = tmp_path / "results"
    results.mkdir()
    funsd = {"runs": [], "notes": ["kept"], "summary": {"ser_micro_f1": 0.5, "epoch_seconds_full_finetune": 266.8},
             "machine": "cpu", "protocol": "p", "recipe": {}, "rule_baselines": {}, "previous_protocol": {}}
    (results / "xformparser_funsd.json").write_text(json.dumps(funsd))
    sweep.publish_report(sweep_json, results, ["--report", str(sweep_json)])
    written = json.loads((results / "xformparser_sweep.json").read_text())
    assert written["selected"]["config"] == specs[0].config.name
    updated = json.loads((results / "xformparser_funsd.json").read_text())
    assert updated["notes"] == ["kept"] and updated["cpu_runs_summary"]["ser_micro_f1"] == 0.5
    summary = updated["summary"]
    assert summary["ser_micro_f1"] == pytest.approx(0.8) and summary["seeds"] == [42, 43, 44]
    assert summary["epoch_seconds_full_finetune"] == 266.8 and "Test GPU" in summary["epoch_seconds_note"]
    markdown = (results / "xformparser_sweep.md").read_text()
    assert "Dev-selected recipe" in markdown and "not started: x" in markdown
    assert "0.800" in (results / "xformparser_funsd.md").read_text()


def test_prepared_documents_round_trip(sweep, tmp_path):
    from xformparser.formats import Document, Entity, Word

    document = Document("d1", [Entity(1, "Name:", [1, 2, 30, 12], "question", [Word("Name:", [1, 2, 30, 12])]),
                               Entity(2, "Ann", [40, 2, 60, 12], "answer", [Word("Ann", [40, 2, 60, 12])])],
                        [(1, 2)], 100.0, 50.0, image_path="/nowhere.png", language="en")
    path = tmp_path / "docs.json.xz"
    with lzma.open(path, "wt", encoding="utf-8") as handle:
        json.dump({"synthetic_documents": sweep.documents_to_json([document])}, handle)
    (back,) = sweep.documents_from_json(sweep.read_json_maybe_xz(path)["synthetic_documents"])
    assert back.links == [(1, 2)] and back.entities[1].words[0].text == "Ann" and back.image_path is None
    assert (back.width, back.height, back.language) == (100.0, 50.0, "en")


def test_training_device_option_is_checked_before_any_work(tmp_path):
    import torch

    from xformparser.training import TrainingOptions, train_parser

    with pytest.raises(ValueError, match="device must be"):
        train_parser(TrainingOptions(train_path="unused", output_dir=str(tmp_path), device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            train_parser(TrainingOptions(train_path="unused", output_dir=str(tmp_path), device="cuda"))


def _grid_model_options():
    spec = importlib.util.spec_from_file_location("xformparser_sweep_options", SWEEP_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    sys.modules.pop(spec.name, None)
    return {**{k: v[0] for k, v in module.ABLATIONS.items()}, **{k: v[0] for k, v in module.VARIANTS.items()}}


@pytest.mark.parametrize("name,options", sorted(_grid_model_options().items()))
def test_every_grid_model_option_trains_and_predicts(name, options, tiny_tokenizer, funsd_folder):
    """Each ablation / variant of the GPU grid builds, takes a training step and decodes (tiny encoder)."""
    import torch
    from transformers import BertConfig

    from xformparser import FormParser, XFormParserConfig, XFormParserModel, load_documents
    from xformparser.features import XFormParserCollator, encode_document

    backbone = BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64).to_dict()
    config = XFormParserConfig(backbone_config=backbone, window_size=24, window_overlap=6, entity_hidden_size=32,
                               lstm_hidden_size=16, re_hidden_size=16, label_embedding_size=8,
                               token_context_size=16, **options)
    torch.manual_seed(0)
    model = XFormParserModel(config)
    documents = load_documents(funsd_folder)[:2]
    encoded = [encode_document(d, tiny_tokenizer, config.labels, config.key_labels, config.value_labels) for d in documents]
    batch = XFormParserCollator(tiny_tokenizer, config.window_size, config.window_overlap)(encoded)
    model.train()
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    report = FormParser(model, tiny_tokenizer).evaluate(documents)
    assert 0.0 <= report["ser"]["micro"]["f1"] <= 1.0 and "line_splitting" in report


@pytest.mark.parametrize("frozen_layers", [0, 2])
def test_batched_padded_encoding_equals_per_form_encoding(frozen_layers):
    """On an accelerator the text-layout backbone encodes a padded batch with an attention mask (on CPU it
    runs form by form, unpadded): both paths give the same states for the real tokens."""
    import torch
    from transformers import BertConfig

    from xformparser.backbones import TextLayoutBackbone

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    backbone = TextLayoutBackbone(config, frozen_layers=frozen_layers).eval()
    lengths = [12, 7]
    input_ids = torch.randint(5, 50, (2, 12))
    bbox = torch.sort(torch.randint(0, 1000, (2, 12, 4)), dim=-1).values  # x0 <= y0 <= x1 <= y1: valid boxes
    attention_mask = (torch.arange(12)[None] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        batched = backbone._encode(input_ids, bbox, attention_mask)  # the accelerator path
        per_form = backbone(input_ids, bbox, attention_mask)  # the CPU path
    for row, length in enumerate(lengths):
        assert torch.allclose(batched[row, :length], per_form[row, :length], atol=1e-5)


def test_every_grid_configuration_is_reproducible_with_the_train_cli(sweep):
    import argparse
    import shlex

    from xformparser.cli import build_parser, train_model_options

    parser = build_parser()
    for spec in sweep.build_grid("gpu"):
        config = sweep.asdict(spec.config)
        argv = shlex.split(sweep.train_command(config))[1:]
        args = parser.parse_args(argv)
        assert isinstance(args, argparse.Namespace) and (args.epochs, args.lr) == (config["epochs"], config["encoder_lr"])
        options = train_model_options(args)
        for key, value in config["model_options"].items():
            assert options[key] == value, (spec.name, key)


def test_report_merges_a_second_sweep_run(sweep, tmp_path):
    specs = sweep.build_grid("gpu")
    machine = {"device": "cuda", "gpu": "Test GPU", "gpu_memory_gib": 1.0, "cpu_count": 16, "torch": "2"}

    def part(runs, not_started, command):
        return {"grid": "gpu", "command": command, "time_budget_seconds": 100, "elapsed_seconds": 90, "jobs": 2,
                "threads_per_job": 1, "queue": [s.name for s in specs], "machine": machine, "runs": runs, "failed": [],
                "unfinished": [], "not_started": [{"name": n, "reason": "budget"} for n in not_started],
                "data_counts": {}, "started_utc": "t"}

    ablation = next(s for s in specs if s.config.group == "ablation")
    first = part([_record(sweep, s, 0.6) for s in specs[:3]], [ablation.name, specs[3].name], "python a")
    second = part([_record(sweep, ablation, 0.5)], [], "python b --only x")
    paths = []
    for index, payload in enumerate((first, second)):
        paths.append(tmp_path / f"sweep{index}.json")
        paths[-1].write_text(json.dumps(payload))
    results = tmp_path / "results"
    results.mkdir()
    selected = sweep.publish_report(paths, results, ["--report", "a", "--report", "b"])
    merged = json.loads((results / "xformparser_sweep.json").read_text())
    assert len(merged["runs"]) == 4 and [n["name"] for n in merged["not_started"]] == [specs[3].name]
    assert merged["time_budget_seconds"] == 200 and len(merged["parts"]) == 2
    assert selected["config"] == specs[0].config.name
    markdown = (results / "xformparser_sweep.md").read_text()
    assert "`python b --only x`" in markdown and ablation.config.name in markdown
    with pytest.raises(ValueError, match="more than one"):
        sweep.merge_sweeps([first, first])


def test_cpu_ablation_grid_can_be_merged_with_the_gpu_grid(sweep):
    cpu, gpu = sweep.build_grid("cpu_ablations"), sweep.build_grid("gpu")
    assert not {s.name for s in cpu} & {s.name for s in gpu}
    assert cpu[0].config.group == "sweep" and not cpu[0].config.model_options
    assert all(s.config.epochs == cpu[0].config.epochs and s.config.encoder_lr == cpu[0].config.encoder_lr for s in cpu)
    per_seed = len(sweep.ABLATIONS) + 1
    assert [s.seed for s in cpu] == [42] * per_seed + [43] * per_seed + [44] * per_seed
    assert {tuple(s.config.model_options.items()) for s in cpu[1:per_seed]} == {
        tuple(o.items()) for o, _ in sweep.ABLATIONS.values()}
