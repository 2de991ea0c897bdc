"""Training dynamics: a `transformers.TrainerCallback` that records every training sample's target loss,
probability and reproduction at checkpoints, and when each sample was in a batch.

    recorder = TrainingDynamicsRecorder(records, tokenizer, every_steps=10, output_dir=run_dir)
    trainer = MultiTaskTrainer(..., callbacks=[recorder])       # or trainer.add_callback(recorder); any Trainer
    trainer.train()                                             # writes run_dir/ilp_dynamics.{npz,json}

Measurements (at step 0, every ``every_steps`` optimizer steps and at the end of each ``train()``) are
teacher-forced scores of the target after its prompt (:func:`sft_core.ilp.probes.score_encoded`):
``loss``, ``prob`` and ``correct`` (every target token is the argmax). Which samples each step trained
on is read from the model's own forward inputs (a forward pre-hook matches the unpadded ``input_ids``
to the samples), so the recorder needs no change to the trainer or its sampler.

Sequential stages: attach the same recorder to each stage's trainer and call :meth:`set_stage` before
each ``train()``; steps keep counting across stages. Several ``sft-core train`` runs each with their
own file are merged by :func:`load_dynamics` in the order given.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from sft_core.atomic_io import atomic_write_bytes, atomic_write_json
from sft_core.sft_data import tokenize_messages

from .items import item_from_record
from .probes import _pad_id, encode_completion, score_encoded

DYNAMICS_ARRAYS = "ilp_dynamics.npz"
DYNAMICS_META = "ilp_dynamics.json"


class TrainingDynamicsRecorder(TrainerCallback):
    """Records per-sample loss / probability / correctness at checkpoints and when samples were trained.

    Args:
        records: the training records (``{"task", "messages"}``, as :func:`read_sft_jsonl` returns).
        tokenizer: the tokenizer the training dataset was built with.
        every_steps: measure every this many optimizer steps (besides step 0 and the end of training).
        output_dir: where ``ilp_dynamics.{npz,json}`` are written at the end of each ``train()``
            (None: keep in memory; call :meth:`save`).
        max_length: the training ``max_length`` (to recognise the same token sequences).
        batch_size: samples per measurement forward pass.
        stage: name of the current stage (see :meth:`set_stage`).
        measure_at_start: also measure before the first step (the untrained model; one extra pass).
    """

    def __init__(self, records: list[dict], tokenizer, every_steps: int = 50, output_dir=None,
                 max_length: int = 512, batch_size: int = 16, stage: str = "train", measure_at_start: bool = True):
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        self.items = [item_from_record(r) for r in records]
        self.keys = [item.key for item in self.items]
        self.tasks = [item.task for item in self.items]
        self.every_steps = int(every_steps)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.batch_size = int(batch_size)
        self.pad_id = _pad_id(tokenizer)
        self.encoded = [encode_completion(item.prompt_messages, item.target, tokenizer, max_length)
                        for item in self.items]
        self._index_of_sequence: dict[tuple, list[int]] = {}
        for index, record in enumerate(records):
            ids = tuple(tokenize_messages(record["messages"], tokenizer, max_length)["input_ids"])
            self._index_of_sequence.setdefault(ids, []).append(index)
        n = len(self.items)
        self.steps: list[int] = []
        self.checkpoint_stage: list[str] = []
        self.losses: list[np.ndarray] = []
        self.probs: list[np.ndarray] = []
        self.correct: list[np.ndarray] = []
        self.first_seen = np.full(n, np.nan)
        self.last_seen = np.full(n, np.nan)
        self.times_seen = np.zeros(n, dtype=int)
        self.stages: list[dict] = []  # {"name", "start_step", "end_step"}
        self.stage = stage
        self.measure_at_start = bool(measure_at_start)
        self._step_offset = 0
        self._local_step = 0
        self._hook = None
        self.unmatched_batches = 0
        self.measure_seconds = 0.0  # time spent measuring (to separate it from training time)

    # ---- stages ----
    def set_stage(self, name: str) -> None:
        """Name the stage the next ``train()`` belongs to (steps continue from the previous stage)."""
        self.stage = str(name)

    @property
    def global_step(self) -> int:
        return self._step_offset + self._local_step

    # ---- measurement ----
    def measure(self, model) -> None:
        """Score every sample now and append one checkpoint (replaces a measurement at the same step)."""
        started = time.perf_counter()
        scores = score_encoded(model, self.encoded, self.pad_id, batch_size=self.batch_size)
        self.measure_seconds += time.perf_counter() - started
        if self.steps and self.steps[-1] == self.global_step:
            for name in ("losses", "probs", "correct", "steps", "checkpoint_stage"):
                getattr(self, name).pop()
        self.steps.append(self.global_step)
        self.checkpoint_stage.append(self.stage)
        self.losses.append(scores["loss"])
        self.probs.append(scores["prob"])
        self.correct.append(scores["correct"])

    def _on_forward(self, module, args, kwargs):
        if not module.training:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None or getattr(input_ids, "ndim", 0) != 2:
            return
        mask = kwargs.get("attention_mask")
        step = self.global_step + 1  # the optimizer step this forward contributes to
        for row in range(input_ids.shape[0]):
            ids = input_ids[row] if mask is None else input_ids[row][mask[row].bool()]
            indices = self._index_of_sequence.get(tuple(ids.tolist()))
            if indices is None:
                self.unmatched_batches += 1
                continue
            for index in indices:
                if np.isnan(self.first_seen[index]):
                    self.first_seen[index] = step
                self.last_seen[index] = step
                self.times_seen[index] += 1

    # ---- TrainerCallback ----
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._local_step = state.global_step
        if self._hook is None and model is not None:
            self._hook = model.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        self.stages.append({"name": self.stage, "start_step": self.global_step, "end_step": self.global_step})
        at_start = self.global_step == 0
        if model is not None and (self.measure_at_start or not at_start) and \
                (not self.steps or self.steps[-1] != self.global_step):
            self.measure(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._local_step = state.global_step
        self.stages[-1]["end_step"] = self.global_step
        if model is not None and state.global_step % self.every_steps == 0:
            self.measure(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._local_step = state.global_step
        self.stages[-1]["end_step"] = self.global_step
        if model is not None and (not self.steps or self.steps[-1] != self.global_step):
            self.measure(model)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._step_offset += state.global_step
        self._local_step = 0
        if self.output_dir is not None and getattr(args, "should_save", True):
            self.save(self.output_dir)

    # ---- persistence ----
    def dynamics(self) -> "Dynamics":
        n = len(self.items)
        stack = (lambda rows, dtype: np.array(rows, dtype=dtype) if rows else np.zeros((0, n), dtype=dtype))
        return Dynamics(keys=list(self.keys), tasks=list(self.tasks), steps=np.array(self.steps, dtype=float),
                        checkpoint_stage=list(self.checkpoint_stage), losses=stack(self.losses, float),
                        probs=stack(self.probs, float), correct=stack(self.correct, bool),
                        first_seen=self.first_seen.copy(), last_seen=self.last_seen.copy(),
                        times_seen=self.times_seen.copy(), stages=[dict(s) for s in self.stages],
                        total_steps=float(self.global_step))

    def save(self, directory) -> Path:
        return self.dynamics().save(directory)


@dataclass
class Dynamics:
    """Recorded training dynamics of ``N`` samples over ``C`` checkpoints (see the module docstring)."""

    keys: list[str]
    tasks: list[str]
    steps: np.ndarray  # [C]
    checkpoint_stage: list[str]  # [C]
    losses: np.ndarray  # [C, N]
    probs: np.ndarray  # [C, N]
    correct: np.ndarray  # [C, N] bool
    first_seen: np.ndarray  # [N]
    last_seen: np.ndarray  # [N]
    times_seen: np.ndarray  # [N]
    stages: list[dict]
    total_steps: float

    def save(self, directory) -> Path:
        directory = Path(directory)
        buffer = io.BytesIO()
        np.savez(buffer, steps=self.steps, losses=self.losses, probs=self.probs, correct=self.correct,
                 first_seen=self.first_seen, last_seen=self.last_seen, times_seen=self.times_seen)
        atomic_write_bytes(directory / DYNAMICS_ARRAYS, buffer.getvalue())
        atomic_write_json(directory / DYNAMICS_META, {
            "keys": self.keys, "tasks": self.tasks, "checkpoint_stage": self.checkpoint_stage,
            "stages": self.stages, "total_steps": self.total_steps})
        return directory / DYNAMICS_ARRAYS

    @classmethod
    def load(cls, directory) -> "Dynamics":
        directory = Path(directory)
        arrays_path, meta_path = directory / DYNAMICS_ARRAYS, directory / DYNAMICS_META
        for path in (arrays_path, meta_path):
            if not path.is_file():
                raise FileNotFoundError(2, "no such file (train with --record-dynamics to create it)", str(path))
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        with np.load(arrays_path, allow_pickle=False) as arrays:
            return cls(keys=meta["keys"], tasks=meta["tasks"], steps=arrays["steps"],
                       checkpoint_stage=meta["checkpoint_stage"], losses=arrays["losses"], probs=arrays["probs"],
                       correct=arrays["correct"].astype(bool), first_seen=arrays["first_seen"],
                       last_seen=arrays["last_seen"], times_seen=arrays["times_seen"], stages=meta["stages"],
                       total_steps=float(meta["total_steps"]))

    def aligned(self, keys: list[str]) -> "Dynamics":
        """The same dynamics re-indexed to ``keys`` (samples it never recorded get NaN / False / 0)."""
        position = {key: i for i, key in enumerate(self.keys)}
        index = np.array([position.get(key, -1) for key in keys], dtype=int)
        found = index >= 0

        def take(array, fill, axis):
            shape = list(array.shape)
            shape[axis] = len(keys)
            result = np.full(shape, fill, dtype=array.dtype if array.dtype != bool else bool)
            if axis == 0:
                result[found] = array[index[found]]
            else:
                result[:, found] = array[:, index[found]]
            return result

        return Dynamics(keys=list(keys), tasks=[self.tasks[i] if i >= 0 else "" for i in index], steps=self.steps,
                        checkpoint_stage=self.checkpoint_stage, losses=take(self.losses.astype(float), np.nan, 1),
                        probs=take(self.probs.astype(float), np.nan, 1), correct=take(self.correct, False, 1),
                        first_seen=take(self.first_seen.astype(float), np.nan, 0),
                        last_seen=take(self.last_seen.astype(float), np.nan, 0),
                        times_seen=take(self.times_seen, 0, 0), stages=self.stages, total_steps=self.total_steps)

    def stage_index_of_last_seen(self) -> np.ndarray:
        """``[N]``: the index of the stage in which each sample was last trained (NaN if never)."""
        result = np.full(len(self.keys), np.nan)
        for index, stage in enumerate(self.stages):
            inside = (self.last_seen > stage["start_step"]) & (self.last_seen <= stage["end_step"])
            result[inside] = index
        return result


def load_dynamics(run_dirs, keys: list[str]) -> Dynamics:
    """Load ``ilp_dynamics`` from one or several run directories (sequential stages, in order) and align
    them to ``keys``; later runs' steps are offset by the earlier runs' totals."""
    merged = None
    for run_dir in run_dirs:
        part = Dynamics.load(run_dir).aligned(keys)
        if merged is None:
            merged = part
            continue
        offset = merged.total_steps
        seen_later = ~np.isnan(part.last_seen)
        first = np.where(np.isnan(merged.first_seen), part.first_seen + offset, merged.first_seen)
        last = np.where(seen_later, part.last_seen + offset, merged.last_seen)
        merged = Dynamics(
            keys=list(keys), tasks=[a or b for a, b in zip(merged.tasks, part.tasks)],
            steps=np.concatenate([merged.steps, part.steps + offset]),
            checkpoint_stage=merged.checkpoint_stage + part.checkpoint_stage,
            losses=np.concatenate([merged.losses, part.losses]), probs=np.concatenate([merged.probs, part.probs]),
            correct=np.concatenate([merged.correct, part.correct]), first_seen=first, last_seen=last,
            times_seen=merged.times_seen + part.times_seen,
            stages=merged.stages + [{**s, "start_step": s["start_step"] + offset, "end_step": s["end_step"] + offset}
                                    for s in part.stages],
            total_steps=offset + part.total_steps)
    if merged is None:
        raise ValueError("load_dynamics: no run directory given")
    return merged
