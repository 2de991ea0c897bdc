"""Checkpoints that are recognisably complete, and the one ``--resume`` behaviour of every sftkit CLI.

A checkpoint directory (``OUTPUT/checkpoint-N``) is *complete* once :data:`COMPLETE_MARKER` exists in
it: a small JSON file written last (atomically, after the model, optimizer, scheduler, RNG, trainer and
EPI state), listing every file of the checkpoint with its size. A process killed while a checkpoint is
being written leaves a directory without the marker (or with a file whose size no longer matches), and
such a directory is never picked for resuming. ``MultiTaskTrainer`` writes the marker for every
checkpoint it saves.

``--resume`` semantics (:func:`resolve_resume`, shared by ``sft-core``, ``srm`` and ``xformparser``):

==============  ==================================================================================
``never``       (default) start fresh; existing checkpoints are left alone.
``auto``        resume from the newest complete checkpoint if there is one, else start fresh;
                either way one line on stderr says which.
``latest``      resume from the newest complete checkpoint; an error if there is none.
``PATH``        resume from that checkpoint directory; an error if it is missing or incomplete.
==============  ==================================================================================

``--resume`` without a value means ``latest``. Incomplete checkpoints that are skipped are named on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from sft_core.atomic_io import atomic_write_json
from sft_core.cli_errors import UserError

COMPLETE_MARKER = "sftkit_checkpoint_complete.json"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
RESUME_MODES = ("never", "auto", "latest")
MARKER_FORMAT_VERSION = 1


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N for a directory named ``checkpoint-N``, else None."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Every ``checkpoint-N`` directory in ``output_dir``, oldest (smallest N) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def _checkpoint_files(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != COMPLETE_MARKER}


def mark_checkpoint_complete(directory: str | os.PathLike, global_step: int | None = None) -> Path:
    """Write the completion marker into ``directory``; call it after every other file is written."""
    directory = Path(directory)
    marker = directory / COMPLETE_MARKER
    atomic_write_json(marker, {"format_version": MARKER_FORMAT_VERSION, "global_step": global_step,
                               "files": _checkpoint_files(directory)})
    return marker


def incomplete_reason(directory: str | os.PathLike) -> str | None:
    """None if ``directory`` is a complete checkpoint, else why not (one short phrase)."""
    directory = Path(directory)
    if not directory.is_dir():
        return "no such directory"
    marker = directory / COMPLETE_MARKER
    if not marker.is_file():
        return f"no {COMPLETE_MARKER} (interrupted while saving?)"
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        files = dict(info["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable {COMPLETE_MARKER}"
    for name, size in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the marker recorded {size}"
    return None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True if ``path`` holds a completion marker and every file it lists, with the recorded sizes."""
    return incomplete_reason(path) is None


def latest_complete_checkpoint(output_dir: str | os.PathLike, *, report_skipped: bool = False) -> Path | None:
    """The complete checkpoint with the largest step in ``output_dir`` (None if there is none)."""
    for directory in reversed(checkpoint_dirs(output_dir)):
        reason = incomplete_reason(directory)
        if reason is None:
            return directory
        if report_skipped:
            print(f"[sftkit] skipping incomplete checkpoint {directory}: {reason}", file=sys.stderr)
    return None


def resolve_resume(output_dir: str | os.PathLike, resume: str | None) -> str | None:
    """Turn a ``--resume`` value into the checkpoint to resume from (None: start fresh).

    See the module docstring for the semantics. Raises :class:`~sft_core.cli_errors.UserError`.
    """
    if resume is None or resume == "never":
        return None
    output_dir = Path(output_dir)
    if resume in ("auto", "latest"):
        checkpoint = latest_complete_checkpoint(output_dir, report_skipped=True)
        if checkpoint is not None:
            print(f"[sftkit] --resume {resume}: resuming from {checkpoint}", file=sys.stderr)
            return str(checkpoint)
        if resume == "auto":
            print(f"[sftkit] --resume auto: no complete checkpoint in {output_dir}; starting fresh", file=sys.stderr)
            return None
        raise UserError(f"--resume latest: {output_dir} holds no complete checkpoint-* directory "
                        "(use --resume auto to start fresh when there is none)")
    path = Path(resume)
    if not path.is_dir():
        raise UserError(f"--resume {resume}: no such checkpoint directory "
                        f"(expected never, auto, latest or a checkpoint-N directory)")
    reason = incomplete_reason(path)
    if reason is not None:
        raise UserError(f"--resume {resume}: incomplete checkpoint ({reason}); "
                        "use --resume latest to pick the newest complete one")
    print(f"[sftkit] --resume: resuming from {path}", file=sys.stderr)
    return str(path)


RESUME_HELP = ("never (default): start fresh; auto: newest complete checkpoint in the output directory, or "
               "fresh if there is none; latest: newest complete checkpoint, an error if there is none; "
               "PATH: that checkpoint directory. A bare --resume means latest. Checkpoints interrupted "
               "while being written are never used.")


def add_resume_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, flag: str = "--resume"):
    """Add the shared ``--resume {never,auto,latest,PATH}`` option (value in ``args.resume``)."""
    return parser.add_argument(flag, nargs="?", const="latest", default="never", metavar="never|auto|latest|PATH",
                               help=RESUME_HELP)
