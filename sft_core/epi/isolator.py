"""`ParameterIsolator`: per-task importance, evolving masks and bit-exact isolation around optimizer steps.

One isolator wraps one model (and optionally its optimizer). Around every optimizer step::

    loss.backward()
    isolator.before_step(task)   # importance EMA from the (all-reduced) gradient, refresh masks if due,
                                 # snapshot elements protected by other tasks, zero their gradient
    optimizer.step()
    isolator.after_step(task)    # write the protected elements back: bit-identical whatever the optimizer did

or simply ``isolator.step(task)`` when the isolator was given the optimizer.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save as safetensors_bytes

from .config import EPIConfig
from sft_core.atomic_io import atomic_write_bytes, atomic_write_text

from .drift import DriftLog
from .masks import pack_bits, top_k_mask, unit_mask_to_param_shape, unpack_bits, units_of

logger = logging.getLogger("sft_core.epi")

STATE_TENSORS_FILE = "epi_state.safetensors"
STATE_META_FILE = "epi_state.json"
STATE_FORMAT_VERSION = 1
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class TaskIsolationState:
    """Everything EPI keeps for one task; lists are indexed like the isolator's tracked parameters."""

    name: str
    steps: int = 0  # optimizer steps taken on this task
    steps_since_refresh: int = 0
    importance: list[torch.Tensor] | None = None  # EMA of normalised saliency per unit (None: freed)
    # The mask of each parameter as sorted int32 unit indices: index gathers/scatters are an order of
    # magnitude faster than boolean masked_select on CPU, and at a 10% ratio they cost 0.4 byte per unit.
    masks: list[torch.Tensor] = field(default_factory=list)
    # Consecutive refreshes each protected unit has spent outside the top ratio, aligned with ``masks``
    # (stored only for protected units: ~ratio bytes per unit instead of one byte per unit).
    patience_counters: list[torch.Tensor] = field(default_factory=list)
    has_mask: bool = False
    frozen: bool = False  # static: probe finished, mask fixed
    changed_since_record: bool = False  # static: the mask appeared since the last drift record

    @property
    def protected_counts(self) -> list[int]:
        return [indices.numel() for indices in self.masks]


class ParameterIsolator:
    """Evolving Parameter Isolation (and the ``static`` / ``full`` baselines) for any ``nn.Module``."""

    def __init__(self, model: torch.nn.Module, config: EPIConfig | None = None,
                 optimizer: torch.optim.Optimizer | None = None, drift_log_path: str | os.PathLike | None = None):
        self.config = config or EPIConfig()
        self.optimizer = optimizer
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("attach_epi: the model has no trainable parameters")
        self.param_names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.units = [units_of(p, self.config.granularity) for p in self.params]
        self.tasks: dict[str, TaskIsolationState] = {}
        self.step_count = 0
        self.refresh_count = 0
        self.drift_log = DriftLog(drift_log_path) if drift_log_path else None
        self.latest_drift: list[dict] = []
        self._masks_version = 0
        self._protection_version = -1
        self._protection_by_task: dict[str, list[torch.Tensor | None]] = {}
        self._protection: list[torch.Tensor | None] = []
        self._saved: list[torch.Tensor | None] | None = None
        self._step_task: str | None = None
        self._chunk_buffer: torch.Tensor | None = None
        for name, param in named:
            if not param.is_contiguous():
                raise ValueError(f"attach_epi: parameter {name} is not contiguous; isolation needs in-place views")

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
        method = self.config.method
        if method == "full":
            return
        if method == "epi" or (method == "static" and not state.frozen):
            self._accumulate_importance(state)
        if method == "static" and not state.frozen and state.steps >= self.config.probe_steps:
            self._freeze_static_mask(state)
        if self._is_refresh_step(self.step_count):
            self._refresh()
        self._snapshot_protected(task)

    def after_step(self, task: str = "default") -> None:
        """Call right after ``optimizer.step()``: restores every element protected for ``task``."""
        if self._step_task != task:
            raise RuntimeError(f"after_step({task!r}) does not match before_step({self._step_task!r})")
        self._step_task = None
        if self._saved is None:
            return
        with torch.no_grad():
            for i, (protected, saved) in enumerate(zip(self._protection, self._saved)):
                if saved is None:
                    continue
                if self.config.isolation_impl == "snapshot":
                    self._unit_view(i).index_copy_(0, protected, saved)
                else:
                    param = self.params[i]
                    keep_old = self._unit_bool(protected, self.units[i])
                    keep_old = unit_mask_to_param_shape(keep_old, param, self.config.granularity)
                    param.copy_(torch.where(keep_old, saved, param))
        self._saved = None

    # ------------------------------------------------------------------ tasks and masks
    def register_task(self, task: str) -> TaskIsolationState:
        if not isinstance(task, str) or not task:
            raise ValueError(f"task names are non-empty strings, got {task!r}")
        if task not in self.tasks:
            self.tasks[task] = TaskIsolationState(
                name=task,
                masks=[torch.zeros(0, dtype=torch.int32, device=p.device) for p in self.params],
                patience_counters=[torch.zeros(0, dtype=torch.uint8, device=p.device) for p in self.params],
            )
        return self.tasks[task]

    def _unit_view(self, index: int) -> torch.Tensor:
        """The parameter as (units, ...) so that dim 0 indexes the selectable units."""
        param = self.params[index]
        if self.config.granularity == "row" and param.dim() >= 1:
            return param.data.view(param.shape[0], -1)
        return param.data.view(-1)

    @staticmethod
    def _unit_bool(indices: torch.Tensor, units: int) -> torch.Tensor:
        mask = torch.zeros(units, dtype=torch.bool, device=indices.device)
        mask[indices.long()] = True
        return mask

    def mask(self, task: str, param_name: str) -> torch.Tensor:
        """The task's current mask of one parameter as a bool tensor broadcastable to the parameter."""
        index = self.param_names.index(param_name)
        unit_mask = self._unit_bool(self.tasks[task].masks[index], self.units[index])
        return unit_mask_to_param_shape(unit_mask, self.params[index], self.config.granularity)

    def protected_for(self, task: str, param_name: str) -> torch.Tensor:
        """Bool tensor (broadcastable to the parameter): elements a step on ``task`` leaves unchanged."""
        index = self.param_names.index(param_name)
        protection = self._build_protection(task)[index]
        param = self.params[index]
        if protection is None:
            return torch.zeros_like(param, dtype=torch.bool)
        unit_mask = self._unit_bool(protection, self.units[index])
        return unit_mask_to_param_shape(unit_mask, param, self.config.granularity)

    def _is_refresh_step(self, step: int) -> bool:
        warmup, interval = self.config.warmup_steps, self.config.update_interval
        return step >= max(1, warmup) and (step - warmup) % interval == 0

    @torch.no_grad()
    def _accumulate_importance(self, state: TaskIsolationState) -> None:
        """EMA of per-tensor max-normalised saliency (values in [0, 1], safe in fp16)."""
        cfg = self.config
        if state.importance is None:
            dtype = _DTYPES[cfg.importance_dtype]
            state.importance = [torch.zeros(n, dtype=dtype, device=p.device) for n, p in zip(self.units, self.params)]
        indices = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not indices:
            return
        keep = cfg.ema_decay
        if cfg.saliency == "fisher" and cfg.granularity == "element":
            # Fused path: no saliency temporary; the peak g^2 is max(|min g|, |max g|)^2 (aminmax is
            # one vectorised pass, unlike a vector_norm(inf)).
            grads = [self.params[i].grad.view(-1) for i in indices]
            extremes = torch.stack([torch.stack(torch.aminmax(g)) for g in grads]).abs().amax(dim=1)
            peaks = extremes.float().square().tolist()
            for i, grad, peak in zip(indices, grads, peaks):
                if peak > 0 and math.isfinite(peak):
                    self._ema_update(state.importance[i], grad, grad, keep, (1 - keep) / peak)
            return
        for i in indices:
            param, grad = self.params[i], self.params[i].grad
            saliency = grad.square() if cfg.saliency == "fisher" else (grad * param).abs_()
            if cfg.granularity == "row" and param.dim() >= 1:
                saliency = saliency.reshape(param.shape[0], -1).sum(dim=1)
            saliency = saliency.reshape(-1).float()
            peak = float(saliency.max())
            if peak > 0 and math.isfinite(peak):
                self._ema_update(state.importance[i], saliency, None, keep, (1 - keep) / peak)

    _CHUNK = 1 << 18

    def _ema_update(self, ema: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None, keep: float, scale: float) -> None:
        """ema = keep * ema + scale * a * b (or scale * a). Low-precision EMAs are updated through a reused
        fp32 chunk buffer: mixed-dtype elementwise kernels are ~6x slower on CPU than fp32 ones."""
        if ema.dtype == torch.float32 or ema.device.type != "cpu":
            ema.mul_(keep)
            if b is None:
                ema.add_(a, alpha=scale)
            else:
                ema.addcmul_(a, b, value=scale)
            return
        if self._chunk_buffer is None or self._chunk_buffer.numel() < self._CHUNK:
            self._chunk_buffer = torch.empty(self._CHUNK, dtype=torch.float32)
        for start in range(0, ema.numel(), self._CHUNK):
            stop = min(ema.numel(), start + self._CHUNK)
            work = self._chunk_buffer[:stop - start]
            work.copy_(ema[start:stop]).mul_(keep)
            if b is None:
                work.add_(a[start:stop], alpha=scale)
            else:
                work.addcmul_(a[start:stop], b[start:stop], value=scale)
            ema[start:stop].copy_(work)

    def _freeze_static_mask(self, state: TaskIsolationState) -> None:
        for i, scores in enumerate(state.importance):
            state.masks[i] = torch.nonzero(top_k_mask(scores, self.config.isolation_ratio)).squeeze(1).int()
            state.patience_counters[i] = torch.zeros(state.masks[i].numel(), dtype=torch.uint8,
                                                     device=state.masks[i].device)
        state.has_mask = state.frozen = state.changed_since_record = True
        state.importance = None  # the probe is over: the EMA is never needed again
        self._sync_masks(state)
        self._masks_version += 1
        logger.info("static mask of task %r frozen after %d probe steps: %d units protected",
                    state.name, state.steps, sum(state.protected_counts))

    def _refresh(self) -> None:
        self.refresh_count += 1
        records = []
        for state in self.tasks.values():
            if self.config.method == "epi" and state.steps_since_refresh > 0 and state.importance is not None:
                per_tensor = self._refresh_epi_mask(state)
                self._sync_masks(state)
                self._masks_version += 1
            elif state.has_mask:
                per_tensor = self._unchanged_drift(state)
            else:
                continue
            state.steps_since_refresh = 0
            records.append(self._drift_record(state, per_tensor))
        self.latest_drift = records
        if self.drift_log is not None and _is_main_process():
            self.drift_log.append(records)
        for record in records:
            logger.info("EPI refresh %d (step %d) task %r: %d protected, +%d added, -%d released, jaccard %.3f",
                        record["refresh"], record["step"], record["task"], record["protected"],
                        record["added"], record["released"], record["jaccard"])

    def _refresh_epi_mask(self, state: TaskIsolationState) -> dict[str, dict]:
        """Re-rank every tensor; full-size work is the top-k and one nonzero, the rest is on mask indices."""
        patience = self.config.release_patience
        per_tensor = {}
        for i, scores in enumerate(state.importance):
            top = top_k_mask(scores, self.config.isolation_ratio)
            top_indices = torch.nonzero(top).squeeze(1)
            previous = state.masks[i].long()
            # Count consecutive refreshes outside the top; release once the count reaches the patience.
            outside = ~top[previous]
            counters = torch.where(outside, state.patience_counters[i] + 1, torch.zeros_like(state.patience_counters[i]))
            kept = outside & (counters < patience)
            kept_indices = previous[kept]
            merged, order = torch.sort(torch.cat([top_indices, kept_indices]))
            merged_counters = torch.cat([torch.zeros(top_indices.numel(), dtype=torch.uint8, device=top.device),
                                         counters[kept]])[order]
            state.masks[i] = merged.int()
            state.patience_counters[i] = merged_counters
            intersection = int(previous.numel() - outside.sum()) + int(kept.sum())
            union = previous.numel() + merged.numel() - intersection
            per_tensor[self.param_names[i]] = {
                "protected": merged.numel(), "added": merged.numel() - intersection,
                "released": previous.numel() - intersection, "intersection": intersection, "union": union,
                "jaccard": 1.0 if union == 0 else intersection / union}
        state.has_mask = True
        return per_tensor

    def _unchanged_drift(self, state: TaskIsolationState) -> dict[str, dict]:
        per_tensor = {}
        appeared = state.changed_since_record
        for name, count in zip(self.param_names, state.protected_counts):
            per_tensor[name] = {"protected": count, "added": count if appeared else 0, "released": 0,
                                "intersection": 0 if appeared else count, "union": count,
                                "jaccard": 0.0 if appeared and count else 1.0}
        state.changed_since_record = False
        return per_tensor

    def _drift_record(self, state: TaskIsolationState, per_tensor: dict[str, dict]) -> dict:
        union = sum(t["union"] for t in per_tensor.values())
        intersection = sum(t["intersection"] for t in per_tensor.values())
        total_units = sum(self.units)
        protected = sum(t["protected"] for t in per_tensor.values())
        return {
            "step": self.step_count, "refresh": self.refresh_count, "task": state.name,
            "method": self.config.method, "task_steps": state.steps,
            "protected": protected, "protected_fraction": protected / total_units,
            "added": sum(t["added"] for t in per_tensor.values()),
            "released": sum(t["released"] for t in per_tensor.values()),
            "jaccard": 1.0 if union == 0 else intersection / union,
            "tensors": {name: {k: t[k] for k in ("jaccard", "protected", "added", "released")}
                        for name, t in per_tensor.items()},
        }

    def drift_summary(self) -> dict[str, float]:
        """Flat metrics of the latest refresh, for a trainer's logger (``epi/<task>/<metric>``)."""
        summary = {}
        for record in self.latest_drift:
            for key in ("jaccard", "protected_fraction", "added", "released"):
                summary[f"epi/{record['task']}/{key}"] = record[key]
        return summary

    # ------------------------------------------------------------------ isolation
    def _build_protection(self, task: str) -> list[torch.Tensor | None]:
        """Per parameter: int64 unit indices a step on ``task`` must leave unchanged (None: nothing).

        Cached per task until the next mask change; with one other task and no own mask to subtract,
        the other task's index tensor is used as is (no copy)."""
        if self._protection_version != self._masks_version:
            self._protection_by_task, self._protection_version = {}, self._masks_version
        if task in self._protection_by_task:
            return self._protection_by_task[task]
        own = self.tasks.get(task)
        others = [s for name, s in self.tasks.items() if name != task and s.has_mask]
        subtract_own = self.config.overlap == "share" and own is not None and own.has_mask
        protection: list[torch.Tensor | None] = []
        for i in range(len(self.params)):
            sources = [other.masks[i] for other in others if other.masks[i].numel()]
            if not sources:
                protection.append(None)
                continue
            if len(sources) == 1 and not (subtract_own and own.masks[i].numel()):
                indices = sources[0]
            else:
                union = torch.zeros(self.units[i], dtype=torch.bool, device=sources[0].device)
                for source in sources:
                    union[source.long()] = True
                if subtract_own and own.masks[i].numel():
                    union[own.masks[i].long()] = False
                indices = torch.nonzero(union).squeeze(1)
            protection.append(indices.long() if indices.numel() else None)
        self._protection_by_task[task] = protection
        return protection

    @torch.no_grad()
    def _snapshot_protected(self, task: str) -> None:
        protection = self._build_protection(task)
        saved: list[torch.Tensor | None] = []
        any_saved = False
        for i, (param, protected) in enumerate(zip(self.params, protection)):
            if protected is None:
                saved.append(None)
                continue
            any_saved = True
            if self.config.isolation_impl == "snapshot":
                saved.append(self._unit_view(i).index_select(0, protected))
            else:
                saved.append(param.detach().clone())
            if self.config.zero_protected_grads and param.grad is not None:
                grad = param.grad
                view = grad.view(grad.shape[0], -1) if self.config.granularity == "row" and grad.dim() >= 1 \
                    else grad.view(-1)
                view.index_fill_(0, protected, 0)
        self._protection = protection
        self._saved = saved if any_saved else None

    def _sync_masks(self, state: TaskIsolationState) -> None:
        """Under torch.distributed, make rank 0's masks (and patience counters) every rank's masks."""
        if not (self.config.sync_masks_across_ranks and torch.distributed.is_available()
                and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
            return
        device = self.params[0].device
        if torch.distributed.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        counts = torch.tensor(state.protected_counts, dtype=torch.int64, device=device)
        torch.distributed.broadcast(counts, src=0)
        counts = counts.tolist()
        pieces = []
        for indices, counters, count in zip(state.masks, state.patience_counters, counts):
            if indices.numel() != count:  # only non-zero ranks can disagree; rank 0's values overwrite these
                indices = torch.zeros(count, dtype=torch.int32)
                counters = torch.zeros(count, dtype=torch.uint8)
            pieces += [indices.to(device, torch.int32), counters.to(device, torch.int32)]
        buffer = torch.cat(pieces)
        torch.distributed.broadcast(buffer, src=0)
        chunks = torch.split(buffer, [piece.numel() for piece in pieces])
        for i, param in enumerate(self.params):
            state.masks[i] = chunks[2 * i].to(param.device, torch.int32).clone()
            state.patience_counters[i] = chunks[2 * i + 1].to(param.device, torch.uint8).clone()

    # ------------------------------------------------------------------ memory accounting
    def state_nbytes(self) -> dict[str, int]:
        """Bytes held between steps (importance EMAs, masks, patience counters, protection index cache)."""
        def nbytes(tensors):
            return sum(t.numel() * t.element_size() for t in tensors if t is not None)

        persistent = {"importance": 0, "masks": 0, "patience_counters": 0}
        for state in self.tasks.values():
            persistent["importance"] += nbytes(state.importance or [])
            persistent["masks"] += nbytes(state.masks)
            persistent["patience_counters"] += nbytes(state.patience_counters)
        mask_ids = {id(t) for state in self.tasks.values() for t in state.masks}
        cache = sum(nbytes(t for t in protection if t is not None and id(t) not in mask_ids)
                    for protection in self._protection_by_task.values())
        persistent["protection_cache"] = cache
        return {**persistent, "persistent_total": sum(persistent.values())}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors for safetensors, JSON-able metadata). Task order is the registration order."""
        tensors: dict[str, torch.Tensor] = {}
        tasks_meta = []
        for task_index, state in enumerate(self.tasks.values()):
            for i, name in enumerate(self.param_names):
                tensors[f"mask/{task_index}/{name}"] = pack_bits(self._unit_bool(state.masks[i], self.units[i]))
                tensors[f"patience/{task_index}/{name}"] = state.patience_counters[i].contiguous()
                if state.importance is not None:
                    tensors[f"importance/{task_index}/{name}"] = state.importance[i].contiguous()
            tasks_meta.append({"name": state.name, "steps": state.steps, "steps_since_refresh": state.steps_since_refresh,
                               "has_mask": state.has_mask, "frozen": state.frozen,
                               "changed_since_record": state.changed_since_record,
                               "has_importance": state.importance is not None})
        meta = {"format_version": STATE_FORMAT_VERSION, "config": self.config.to_dict(), "step_count": self.step_count,
                "refresh_count": self.refresh_count, "param_names": self.param_names, "tasks": tasks_meta}
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        if meta.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(f"EPI state format {meta.get('format_version')!r} is not supported")
        if meta["param_names"] != self.param_names:
            raise ValueError("EPI state does not match this model: its trainable parameter names differ")
        saved_config = EPIConfig.from_dict(meta["config"])
        for key in ("method", "granularity", "importance_dtype"):
            if getattr(saved_config, key) != getattr(self.config, key):
                raise ValueError(f"EPI state was saved with {key}={getattr(saved_config, key)!r}, "
                                 f"this run uses {getattr(self.config, key)!r}")
        self.tasks = {}
        for task_index, task_meta in enumerate(meta["tasks"]):
            state = self.register_task(task_meta["name"])
            for attr in ("steps", "steps_since_refresh", "has_mask", "frozen", "changed_since_record"):
                setattr(state, attr, task_meta[attr])

            def take(kind: str, i: int) -> torch.Tensor:
                return tensors[f"{kind}/{task_index}/{self.param_names[i]}"].to(self.params[i].device)

            state.masks = [torch.nonzero(unpack_bits(take("mask", i), self.units[i])).squeeze(1).int()
                           for i in range(len(self.params))]
            state.patience_counters = [take("patience", i) for i in range(len(self.params))]
            state.importance = ([take("importance", i) for i in range(len(self.params))]
                                if task_meta["has_importance"] else None)
        self.step_count = meta["step_count"]
        self.refresh_count = meta["refresh_count"]
        self._masks_version += 1

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``epi_state.safetensors`` + ``epi_state.json`` into ``directory`` (atomically)."""
        tensors, meta = self.state_dict()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / STATE_TENSORS_FILE, safetensors_bytes({k: v.cpu() for k, v in tensors.items()}))
        atomic_write_text(directory / STATE_META_FILE, json.dumps(meta, indent=1))

    def load(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        meta_path, tensor_path = directory / STATE_META_FILE, directory / STATE_TENSORS_FILE
        if not meta_path.is_file() or not tensor_path.is_file():
            raise FileNotFoundError(f"{directory}: no EPI state ({STATE_META_FILE} + {STATE_TENSORS_FILE})")
        self.load_state_dict(load_file(str(tensor_path)), json.loads(meta_path.read_text()))


def has_saved_state(directory: str | os.PathLike) -> bool:
    return (Path(directory) / STATE_META_FILE).is_file() and (Path(directory) / STATE_TENSORS_FILE).is_file()


def _is_main_process() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True


def attach_epi(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
               config: EPIConfig | None = None, drift_log_path: str | os.PathLike | None = None) -> ParameterIsolator:
    """Switch parameter isolation on for a plain PyTorch loop (the PEFT ``get_peft_model`` of EPI)::

        isolator = attach_epi(model, optimizer, EPIConfig(method="epi"))
        for task, batch in loader:
            model(**batch).loss.backward()
            isolator.step(task)          # = before_step(task); optimizer.step(); after_step(task)
            optimizer.zero_grad()
    """
    return ParameterIsolator(model, config, optimizer=optimizer, drift_log_path=drift_log_path)
