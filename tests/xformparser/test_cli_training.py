import json

import pytest

from xformparser.cli import build_parser, main
from xformparser_fixtures import write_funsd_folder


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "convert"):
        assert command in out
    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for option in ("--tuner", "--image-branch", "--epi-tasks", "--resume", "--no-geometric-features"):
        assert option in train_help


def _train_args(train, dev, output, *extra):
    return ["train", "--train", str(train), "--eval", str(dev), "--output", str(output), "--window-size", "48",
            "--window-overlap", "8", "--batch-size", "2", "--head-lr", "3e-3", *extra]


def test_train_evaluate_and_resume_end_to_end(tiny_encoder_dir, tmp_path, capsys):
    train = write_funsd_folder(tmp_path / "train", count=6, seed=0)
    dev = write_funsd_folder(tmp_path / "dev", count=2, seed=100)
    output = tmp_path / "model"
    assert main(_train_args(train, dev, output, "--backbone", tiny_encoder_dir, "--epochs", "2")) == 0
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["global_steps"] == 6 and summary["labels"] == ["answer", "header", "other", "question"]
    assert summary["key_labels"] == ["question"] and summary["value_labels"] == ["answer"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "eval_report.json", "training_summary.json"):
        assert (output / name).exists(), name
    assert not list(output.glob("*.bin")) or all(p.name == "training_args.bin" for p in output.glob("*.bin"))

    report_path = tmp_path / "report.json"
    assert main(["evaluate", "--model", str(output), "--data", str(dev), "--output", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["documents"] == 2 and report["gold_links"] == 10
    for key in ("ser", "seqeval_bio", "re_gold_labels", "re_end_to_end", "re_rule_gold_labels", "joint_inference"):
        assert key in report
    assert report["line_splitting"]["spans"] == 10  # every "name:" + answer line of the 2 forms is a merged span
    assert set(report["ser"]["per_label"]) >= {"question", "answer"}
    # the rule linker on these synthetic forms (value right of its key on the same line) is perfect
    assert report["re_rule_gold_labels"]["f1"] == 1.0
    capsys.readouterr()

    # resume: continue the same run to 3 epochs from its last checkpoint
    assert main(_train_args(train, dev, output, "--backbone", tiny_encoder_dir, "--epochs", "3", "--resume")) == 0
    resumed = json.loads((output / "training_summary.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-6") and resumed["global_steps"] == 9


def test_training_learns_the_synthetic_task(tiny_encoder_dir, tmp_path, capsys):
    train = write_funsd_folder(tmp_path / "train", count=8, seed=0)
    dev = write_funsd_folder(tmp_path / "dev", count=2, seed=100)
    output = tmp_path / "model"
    assert main(_train_args(train, dev, output, "--backbone", tiny_encoder_dir, "--epochs", "6",
                            "--lr", "1e-3")) == 0
    report = json.loads((output / "eval_report.json").read_text())
    # labels are learnable from word identity and layout: far above the 4-class chance level
    assert report["ser"]["micro"]["f1"] > 0.8
    assert report["re_gold_labels"]["f1"] > 0.8


def test_epi_tuner_with_objective_tasks(tiny_encoder_dir, tmp_path, capsys):
    train = write_funsd_folder(tmp_path / "train", count=4, seed=0)
    dev = write_funsd_folder(tmp_path / "dev", count=1, seed=100)
    output = tmp_path / "model"
    assert main(_train_args(train, dev, output, "--backbone", tiny_encoder_dir, "--epochs", "1", "--tuner", "epi")) == 0
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["task_mode"] == "objectives" and summary["global_steps"] == 4
    assert (output / "epi_state.safetensors").exists()


def test_evaluate_reports_a_missing_model_dir(tmp_path, capsys):
    data = write_funsd_folder(tmp_path / "data", count=1)
    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--data", str(data)]) == 2
    assert "nope: model directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--model", str(tmp_path / "empty"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "not an xformparser model directory" in err and len(err.strip().splitlines()) == 1


def test_frozen_layers_option_reaches_the_saved_config(tiny_encoder_dir, tmp_path, capsys):
    train = write_funsd_folder(tmp_path / "train", count=2, seed=0)
    dev = write_funsd_folder(tmp_path / "dev", count=1, seed=100)
    output = tmp_path / "model"
    assert main(_train_args(train, dev, output, "--backbone", tiny_encoder_dir, "--epochs", "1",
                            "--frozen-layers", "1")) == 0
    assert json.loads((output / "config.json").read_text())["frozen_layers"] == 1
    # the saved model names its backbone instead of copying the frozen layers, and loads back from it
    from safetensors import safe_open

    with safe_open(str(output / "model.safetensors"), framework="pt") as handle:
        assert not any(".encoder.layer.0." in key or "word_embeddings" in key for key in handle.keys())
    capsys.readouterr()
    assert main(["evaluate", "--model", str(output), "--data", str(dev)]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 1


def test_train_writes_only_json_to_stdout_and_warns_once_per_missing_image(tiny_encoder_dir, tmp_path, capsys):
    train = write_funsd_folder(tmp_path / "train", count=2, seed=0)  # annotations only, no images
    dev = write_funsd_folder(tmp_path / "dev", count=1, seed=100)
    output = tmp_path / "model"
    assert main(_train_args(train, dev, output, "--backbone", tiny_encoder_dir, "--epochs", "1")) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # nothing but the JSON summary (Trainer logs went to stderr)
    assert summary["global_steps"] == 1
    # once per document: doc000 is in both folders (train + dev), doc001 only in train
    assert captured.err.count("warning: document doc000: no page image") == 2
    assert captured.err.count("warning: document doc001: no page image") == 1
    assert "'loss'" in captured.err or "train_runtime" in captured.err

    assert main(["evaluate", "--model", str(output), "--data", str(dev)]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)
    assert captured.err.count("warning: document doc000: no page image") == 1


def test_image_branch_refuses_documents_without_images(tiny_encoder_dir, tmp_path, capsys):
    train = write_funsd_folder(tmp_path / "train", count=2, seed=0)
    code = main(_train_args(train, train, tmp_path / "model", "--backbone", tiny_encoder_dir, "--epochs", "1",
                            "--image-branch"))
    err = capsys.readouterr().err
    assert code == 2 and "image branch needs it" in err and "document doc000" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "model" / "model.safetensors").exists()


def test_convert_warns_about_missing_images(tmp_path, capsys):
    data = write_funsd_folder(tmp_path / "data", count=2)
    assert main(["convert", "--input", str(data), "--output", str(tmp_path / "out.json"), "--output-format", "xfund"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: document doc001: no page image") == 1


def test_resume_semantics_are_the_shared_ones(tiny_encoder_dir, tmp_path, capsys):
    train = write_funsd_folder(tmp_path / "train", count=2, seed=0)
    output = tmp_path / "model"
    args = _train_args(train, train, output, "--backbone", tiny_encoder_dir, "--epochs", "1")
    assert main([*args, "--resume", "latest"]) == 2  # nothing to resume: an error, not a silent fresh start
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert main([*args, "--resume", "auto"]) == 0  # auto: fresh when there is nothing
    assert json.loads(capsys.readouterr().out)["resumed_from"] is None
    assert main([*args, "--resume", str(tmp_path / "no-such-checkpoint")]) == 2


def test_bad_data_is_one_line_exit_2(tmp_path, capsys):
    broken = tmp_path / "broken"
    (broken / "annotations").mkdir(parents=True)
    (broken / "annotations" / "a.json").write_text('{"form": [{"id": 1, "text": "x", "label": "question"}]}')
    assert main(["evaluate", "--data", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "without 'box'" in err and len(err.strip().splitlines()) == 1


def test_optimizer_groups_come_from_the_shared_helper(tiny_encoder_dir):
    from sft_core.trainer import MultiTaskTrainingArguments
    from xformparser.training import XFormParserTrainer, build_parser_model

    model = build_parser_model(tiny_encoder_dir, ["answer", "header", "other", "question"], ["question"], ["answer"],
                               {"window_size": 48, "window_overlap": 8})
    args = MultiTaskTrainingArguments(output_dir="unused", learning_rate=2e-5, weight_decay=0.1, report_to=[],
                                      use_cpu=True, tuner="full")
    trainer = XFormParserTrainer(model=model, args=args, train_dataset=[{"task": "default"}], head_learning_rate=1e-3)
    optimizer = trainer.create_optimizer()
    by_name = {name: parameter for name, parameter in model.named_parameters()}
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    query = by_name["backbone.adapter.encoder.encoder.layer.0.attention.self.query.weight"]
    assert group_of[id(query)]["lr"] == 2e-5 and group_of[id(query)]["weight_decay"] == 0.1
    layout = by_name["backbone.adapter.layout.x_embedding.weight"]
    assert group_of[id(layout)]["lr"] == 1e-3
    norm_bias = by_name["backbone.adapter.encoder.encoder.layer.0.output.LayerNorm.weight"]
    assert group_of[id(norm_bias)]["weight_decay"] == 0.0
    word_embeddings = by_name["backbone.adapter.encoder.embeddings.word_embeddings.weight"]
    assert id(word_embeddings) not in group_of  # frozen: not in the optimizer at all


def test_layout_embeddings_at_the_encoder_input_train_at_the_encoder_rate(tiny_encoder_dir):
    from sft_core.trainer import MultiTaskTrainingArguments
    from xformparser import XFormParserConfig
    from xformparser.training import TrainingOptions, XFormParserTrainer, build_parser_model, layout_learning_rate

    options = TrainingOptions(train_path="unused", output_dir="unused", learning_rate=2e-5)
    assert layout_learning_rate(options, XFormParserConfig(frozen_layers=0)) == 2e-5
    assert layout_learning_rate(options, XFormParserConfig(frozen_layers=2)) is None  # follows the heads
    model = build_parser_model(tiny_encoder_dir, ["answer", "header", "other", "question"], ["question"], ["answer"], {})
    args = MultiTaskTrainingArguments(output_dir="unused", learning_rate=2e-5, report_to=[], use_cpu=True)
    trainer = XFormParserTrainer(model=model, args=args, train_dataset=[{"task": "default"}], head_learning_rate=1e-3,
                                 layout_learning_rate=2e-5)
    group_of = {id(p): g for g in trainer.create_optimizer().param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert group_of[id(named["backbone.adapter.layout.x_embedding.weight"])]["lr"] == 2e-5
    assert group_of[id(named["ser_head.1.weight"])]["lr"] == 1e-3
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == sum(p.requires_grad for p in model.parameters())
