"""sft_core.checkpoints: completion markers and the shared --resume semantics (no training here)."""

from __future__ import annotations

import argparse

import pytest

from sft_core.checkpoints import (COMPLETE_MARKER, add_resume_argument, checkpoint_dirs, is_complete_checkpoint,
                                  latest_complete_checkpoint, mark_checkpoint_complete, resolve_resume)
from sft_core.cli_errors import UserError


def make_checkpoint(output, step, complete=True):
    directory = output / f"checkpoint-{step}"
    (directory / "sub").mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"x" * step)
    (directory / "sub" / "state.json").write_text("{}")
    if complete:
        mark_checkpoint_complete(directory, global_step=step)
    return directory


def test_marker_makes_a_checkpoint_complete_and_size_changes_break_it(tmp_path):
    directory = make_checkpoint(tmp_path, 5, complete=False)
    assert not is_complete_checkpoint(directory)
    mark_checkpoint_complete(directory, 5)
    assert is_complete_checkpoint(directory)
    (directory / "model.safetensors").write_bytes(b"x" * 2)  # truncated after the marker
    assert not is_complete_checkpoint(directory)
    (directory / "model.safetensors").write_bytes(b"x" * 5)
    (directory / "sub" / "state.json").unlink()
    assert not is_complete_checkpoint(directory)
    (directory / "sub" / "state.json").write_text("{}")
    (directory / COMPLETE_MARKER).write_text("{not json")
    assert not is_complete_checkpoint(directory)


def test_latest_complete_skips_newer_incomplete_ones_and_sorts_numerically(tmp_path, capsys):
    make_checkpoint(tmp_path, 9)
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 30, complete=False)
    (tmp_path / "checkpoint-x").mkdir()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-9", "checkpoint-10", "checkpoint-30"]
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-10"
    assert resolve_resume(tmp_path, "latest") == str(tmp_path / "checkpoint-10")
    err = capsys.readouterr().err
    assert "skipping incomplete checkpoint" in err and "checkpoint-30" in err and "resuming from" in err


def test_resume_modes(tmp_path, capsys):
    assert resolve_resume(tmp_path, None) is None
    assert resolve_resume(tmp_path, "never") is None
    assert resolve_resume(tmp_path / "missing", "auto") is None
    assert "starting fresh" in capsys.readouterr().err
    with pytest.raises(UserError, match="--resume latest: .* holds no complete checkpoint"):
        resolve_resume(tmp_path, "latest")
    incomplete = make_checkpoint(tmp_path, 4, complete=False)
    with pytest.raises(UserError, match="incomplete checkpoint"):
        resolve_resume(tmp_path, str(incomplete))
    with pytest.raises(UserError, match="no such checkpoint directory"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-99"))
    complete = make_checkpoint(tmp_path, 2)
    assert resolve_resume(tmp_path, str(complete)) == str(complete)
    assert resolve_resume(tmp_path, "auto") == str(complete)


def test_add_resume_argument_defaults_and_bare_flag():
    parser = argparse.ArgumentParser()
    add_resume_argument(parser)
    assert parser.parse_args([]).resume == "never"
    assert parser.parse_args(["--resume"]).resume == "latest"
    assert parser.parse_args(["--resume", "auto"]).resume == "auto"
    assert parser.parse_args(["--resume", "out/checkpoint-3"]).resume == "out/checkpoint-3"
