"""`ParameterIsolator`: the coordinator that runs EPI (or a baseline) around every optimizer step.

One isolator wraps one model (and optionally its optimizer). Around every optimizer step::

    loss.backward()
    isolator.before_step(task)   # importance EMA from the (all-reduced) gradient, refresh masks if due,
                                 # snapshot units protected by other tasks, zero their gradient
    optimizer.step()
    isolator.after_step(task)    # write the protected units back: bit-identical whatever the optimizer did

or simply ``isolator.step(task)`` when the isolator was given the optimizer.

Each idea lives in its own module: importance estimators (``importance.py`` + ``importance_gradient.py``),
selection scores (``selection.py``), mask policies (``policies.py``, ``policy_epi.py``, ``policy_static.py``,
``policy_random.py``), protection and snapshot/restore (``protection.py``), replay buffers for absent
tasks (``replay.py``), state I/O (``state_io.py``), drift records (``drift.py``) and DDP helpers
(``distributed.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import state_io
from .config import EPIConfig
from .distributed import broadcast_masks, is_distributed, is_main_process
from .drift import DriftLog, drift_record, unchanged_drift
from .importance import ImportanceAccumulator, get_estimator, storage_dtype
from .masks import unit_mask_to_param_shape, units_of
from .policies import get_policy
from .protection import Protector, unit_bool
from .replay import BatchCapture, NoReplayLoss, ReplayBuffer, replay_gradients
from .selection import selection_scores

logger = logging.getLogger("sft_core.epi")

# re-exported for callers of the pre-split module
STATE_TENSORS_FILE = state_io.STATE_TENSORS_FILE
STATE_META_FILE = state_io.STATE_META_FILE
has_saved_state = state_io.has_saved_state


@dataclass
class TaskIsolationState:
    """Everything EPI keeps for one task; lists are indexed like the isolator's tracked parameters."""

    name: str
    steps: int = 0  # optimizer steps taken on this task
    steps_since_refresh: int = 0
    importance: list[torch.Tensor] | None = None  # EMA of mean-normalised saliency per unit (None: freed)
    # The mask of each parameter as sorted int32 unit indices: index gathers/scatters are an order of
    # magnitude faster than boolean masked_select on CPU, and at a 10% ratio they cost 0.4 byte per unit.
    masks: list[torch.Tensor] = field(default_factory=list)
    # Consecutive refreshes each protected unit has spent outside the top ratio, aligned with ``masks``.
    patience_counters: list[torch.Tensor] = field(default_factory=list)
    has_mask: bool = False
    frozen: bool = False  # static / random: probe finished, mask fixed
    changed_since_record: bool = False  # static / random: the mask appeared since the last drift record
    replay: ReplayBuffer | None = None
    replays: int = 0  # refreshes at which this task's importance was re-estimated on its replay buffer

    @property
    def protected_counts(self) -> list[int]:
        return [indices.numel() for indices in self.masks]


class ParameterIsolator:
    """Evolving Parameter Isolation (and the ``static`` / ``random`` / ``full`` baselines) for any ``nn.Module``.

    ``replay_loss(model, batch) -> scalar loss`` computes the loss of a replayed batch (default: the
    model's own output ``.loss`` / ``["loss"]``); only used with ``EPIConfig.replay_batches > 0``.
    """

    def __init__(self, model: torch.nn.Module, config: EPIConfig | None = None,
                 optimizer: torch.optim.Optimizer | None = None, drift_log_path: str | os.PathLike | None = None,
                 replay_loss: Callable | None = None):
        self.config = config or EPIConfig()
        self.model = model
        self.optimizer = optimizer
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("attach_epi: the model has no trainable parameters")
        for name, param in named:
            if not param.is_contiguous():
                raise ValueError(f"attach_epi: parameter {name} is not contiguous; isolation needs in-place views")
        self.param_names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.units = [units_of(p, self.config.granularity) for p in self.params]
        self.policy = get_policy(self.config.method)
        estimator = get_estimator(self.config.saliency)
        self.accumulator = ImportanceAccumulator(estimator, self.config.granularity,
                                                 self.config.ema_decay, storage_dtype(self.config.importance_dtype))
        # estimators that watch every backward pass (fisher_mb); full fine-tuning never reads importance
        self.collector = estimator.make_collector(self.params) if self.config.isolates else None
        self.protector = Protector(self.params, self.units, self.config.granularity, self.config.overlap,
                                   self.config.isolation_impl, self.config.zero_protected_grads)
        self.replay_loss = replay_loss
        self.uses_replay = self.config.method == "epi" and self.config.replay_batches > 0
        self.capture = BatchCapture(model) if self.uses_replay else None
        self.tasks: dict[str, TaskIsolationState] = {}
        self.step_count = 0
        self.refresh_count = 0
        self.drift_log = DriftLog(drift_log_path) if drift_log_path else None
        self.latest_drift: list[dict] = []
        self._step_task: str | None = None

    # ------------------------------------------------------------------ the step protocol
    def step(self, task: str = "default") -> None:
        """``before_step`` + ``optimizer.step()`` + ``after_step`` for an isolator given an optimizer."""
        if self.optimizer is None:
            raise RuntimeError("ParameterIsolator.step needs the optimizer: attach_epi(model, optimizer, config)")
        self.before_step(task)
        self.optimizer.step()
        self.after_step(task)

    def before_step(self, task: str = "default") -> None:
        """Call after backward (gradients all-reduced) and before ``optimizer.step()``."""
        if self._step_task is not None:
            raise RuntimeError(f"before_step({task!r}) called twice without after_step({self._step_task!r})")
        state = self.register_task(task)
        self.step_count += 1
        state.steps += 1
        state.steps_since_refresh += 1
        self._step_task = task
        if not self.config.isolates:
            return
        if self.capture is not None:
            batch = self.capture.take()
            if batch is not None:
                state.replay.offer(batch)
        collected = self.collector.take() if self.collector is not None else None  # reset every step
        if self.policy.tracks_importance(state) and (state.steps - 1) % self.config.importance_interval == 0:
            if state.importance is None:
                state.importance = self.accumulator.new_emas(self.units, self.params)
            if collected is not None:
                self.accumulator.update_from_saliency(state.importance, self.params, collected)
            else:
                self.accumulator.update(state.importance, self.params, [p.grad for p in self.params])
        self.policy.after_importance(self, state)
        if self._is_refresh_step(self.step_count):
            self._refresh()
        self.protector.snapshot(task, self.tasks)

    def after_step(self, task: str = "default") -> None:
        """Call right after ``optimizer.step()``: restores every unit protected for ``task``."""
        if self._step_task != task:
            raise RuntimeError(f"after_step({task!r}) does not match before_step({self._step_task!r})")
        self._step_task = None
        self.protector.restore()

    # ------------------------------------------------------------------ tasks and masks
    def register_task(self, task: str) -> TaskIsolationState:
        if not isinstance(task, str) or not task:
            raise ValueError(f"task names are non-empty strings, got {task!r}")
        if task not in self.tasks:
            self.tasks[task] = TaskIsolationState(
                name=task,
                masks=[torch.zeros(0, dtype=torch.int32, device=p.device) for p in self.params],
                patience_counters=[torch.zeros(0, dtype=torch.uint8, device=p.device) for p in self.params],
                replay=ReplayBuffer(task, self.config.replay_batches, self.config.replay_seed)
                if self.uses_replay else None,
            )
        return self.tasks[task]

    def mask(self, task: str, param_name: str) -> torch.Tensor:
        """The task's current mask of one parameter as a bool tensor broadcastable to the parameter."""
        index = self.param_names.index(param_name)
        unit_mask = unit_bool(self.tasks[task].masks[index], self.units[index])
        return unit_mask_to_param_shape(unit_mask, self.params[index], self.config.granularity)

    def protected_for(self, task: str, param_name: str) -> torch.Tensor:
        """Bool tensor (broadcastable to the parameter): units a step on ``task`` leaves unchanged."""
        return self.protector.protected_bool(task, self.tasks, self.param_names.index(param_name))

    def mask_overlap(self, task_a: str, task_b: str) -> dict[str, float]:
        """Overlap of two tasks' masks over all tensors: ``intersection / min(size)`` and Jaccard."""
        intersection = size_a = size_b = 0
        for i, units in enumerate(self.units):
            a, b = self.tasks[task_a].masks[i], self.tasks[task_b].masks[i]
            size_a, size_b = size_a + a.numel(), size_b + b.numel()
            if a.numel() and b.numel():
                intersection += int((unit_bool(a, units) & unit_bool(b, units)).sum())
        union = size_a + size_b - intersection
        return {"overlap": intersection / max(1, min(size_a, size_b)), "jaccard": intersection / max(1, union),
                "intersection": intersection, "size_a": size_a, "size_b": size_b}

    def selection_scores(self, state: TaskIsolationState, index: int) -> torch.Tensor:
        return selection_scores(self.config.selection_score, state, self.tasks.values(), index)

    def masks_changed(self, state: TaskIsolationState | None) -> None:
        """A policy changed ``state``'s masks (None: all tasks): sync across ranks, drop cached protection."""
        if state is not None and self.config.sync_masks_across_ranks and is_distributed():
            broadcast_masks(state, self.params)
        self.protector.invalidate()

    def replay_importance(self, state: TaskIsolationState) -> bool:
        """Re-estimate an absent task's importance on its replay buffer with the current weights."""
        if state.replay is None or not state.replay.batches or state.importance is None:
            return False
        for batch in state.replay.batches:
            try:
                with self.collector.paused() if self.collector is not None else contextlib.nullcontext():
                    grads = replay_gradients(self.model, self.params, batch, self.replay_loss)
            except NoReplayLoss as error:  # a plain loop whose model returns predictions: no default loss
                logger.warning("%s; absent tasks keep their masks (replay switched off)", error)
                self.disable_replay()
                return False
            except Exception as error:  # noqa: BLE001
                if self.replay_loss is not None:  # the caller's own loss function failed: that is their bug
                    raise
                # the default replay calls model(**captured tensors); a forward that also needs non-tensor
                # arguments cannot be replayed that way
                logger.warning("EPI replay: model(**captured batch) failed (%s: %s); absent tasks keep their "
                               "masks (replay switched off; pass replay_loss=fn(model, batch) to enable it)",
                               type(error).__name__, error)
                self.disable_replay()
                return False
            self.accumulator.update(state.importance, self.params, grads)
        state.replays += 1
        return True

    def _is_refresh_step(self, step: int) -> bool:
        warmup, interval = self.config.warmup_steps, self.config.update_interval
        return step >= max(1, warmup) and (step - warmup) % interval == 0

    def _refresh(self) -> None:
        self.refresh_count += 1
        records = []
        for state in self.tasks.values():
            per_tensor = self.policy.refresh(self, state)
            if per_tensor is None:
                if not state.has_mask:
                    continue
                per_tensor = unchanged_drift(self.param_names, state)
            state.steps_since_refresh = 0
            records.append(drift_record(state, per_tensor, step=self.step_count, refresh=self.refresh_count,
                                        method=self.config.method, total_units=sum(self.units)))
        self.latest_drift = records
        if self.drift_log is not None and is_main_process():
            self.drift_log.append(records)
        for record in records:
            logger.info("EPI refresh %d (step %d) task %r: %d protected, +%d added, -%d released, jaccard %.3f",
                        record["refresh"], record["step"], record["task"], record["protected"],
                        record["added"], record["released"], record["jaccard"])

    def drift_summary(self) -> dict[str, float]:
        """Flat metrics of the latest refresh, for a trainer's logger (``epi/<task>/<metric>``)."""
        summary = {}
        for record in self.latest_drift:
            for key in ("jaccard", "protected_fraction", "added", "released"):
                summary[f"epi/{record['task']}/{key}"] = record[key]
        return summary

    # ------------------------------------------------------------------ memory accounting
    def state_nbytes(self) -> dict[str, int]:
        """Bytes held between steps (importance EMAs, masks, patience counters, replay batches, the
        protection index cache)."""
        def nbytes(tensors):
            return sum(t.numel() * t.element_size() for t in tensors if t is not None)

        persistent = {"importance": 0, "masks": 0, "patience_counters": 0, "replay": 0}
        for state in self.tasks.values():
            persistent["importance"] += nbytes(state.importance or [])
            persistent["masks"] += nbytes(state.masks)
            persistent["patience_counters"] += nbytes(state.patience_counters)
            if state.replay is not None:
                persistent["replay"] += nbytes(v for batch in state.replay.batches for v in batch.values())
        mask_ids = {id(t) for state in self.tasks.values() for t in state.masks}
        persistent["protection_cache"] = self.protector.cache_nbytes(mask_ids)
        return {**persistent, "persistent_total": sum(persistent.values())}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        return state_io.state_dict(self)

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        state_io.load_state_dict(self, tensors, meta)

    def save(self, directory: str | os.PathLike) -> None:
        state_io.save(self, directory)

    def load(self, directory: str | os.PathLike) -> None:
        state_io.load(self, directory)

    def disable_replay(self) -> None:
        """Stop capturing batches and drop the replay buffers (absent tasks then keep their masks)."""
        self.uses_replay = False
        if self.capture is not None:
            self.capture.close()
            self.capture = None
        for state in self.tasks.values():
            state.replay = None

    def close(self) -> None:
        """Remove the hooks: batch capture (replay) and the per-backward importance collector."""
        if self.capture is not None:
            self.capture.close()
            self.capture = None
        if self.collector is not None:
            self.collector.close()
            self.collector = None


def attach_epi(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
               config: EPIConfig | None = None, drift_log_path: str | os.PathLike | None = None,
               replay_loss: Callable | None = None) -> ParameterIsolator:
    """Switch parameter isolation on for a plain PyTorch loop (the PEFT ``get_peft_model`` of EPI)::

        isolator = attach_epi(model, optimizer, EPIConfig(method="epi"))
        for task, batch in loader:
            model(**batch).loss.backward()
            isolator.step(task)          # = before_step(task); optimizer.step(); after_step(task)
            optimizer.zero_grad()
    """
    return ParameterIsolator(model, config, optimizer=optimizer, drift_log_path=drift_log_path,
                             replay_loss=replay_loss)
