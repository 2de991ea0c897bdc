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
    for key in ("ser", "seqeval_bio", "re_gold_labels", "re_end_to_end", "re_rule_gold_labels"):
        assert key in report
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
    assert "not an xformparser model directory" in capsys.readouterr().err


def test_frozen_layers_option_reaches_the_saved_config(tiny_encoder_dir, tmp_path, capsys):
    train = write_funsd_folder(tmp_path / "train", count=2, seed=0)
    dev = write_funsd_folder(tmp_path / "dev", count=1, seed=100)
    output = tmp_path / "model"
    assert main(_train_args(train, dev, output, "--backbone", tiny_encoder_dir, "--epochs", "1",
                            "--frozen-layers", "1")) == 0
    assert json.loads((output / "config.json").read_text())["frozen_layers"] == 1
