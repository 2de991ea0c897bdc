"""EPI state I/O: ``epi_state.safetensors`` (importance EMAs, masks as packed bits, patience counters,
replay batches) + ``epi_state.json`` (config, counters, task order). No pickle; written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save as safetensors_bytes

from sft_core.atomic_io import atomic_write_bytes, atomic_write_text

from .config import EPIConfig
from .masks import pack_bits, unpack_bits
from .protection import unit_bool

STATE_TENSORS_FILE = "epi_state.safetensors"
STATE_META_FILE = "epi_state.json"
STATE_FORMAT_VERSION = 2


def state_dict(isolator) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors for safetensors, JSON-able metadata). Task order is the registration order."""
    tensors: dict[str, torch.Tensor] = {}
    tasks_meta = []
    for task_index, state in enumerate(isolator.tasks.values()):
        for i, name in enumerate(isolator.param_names):
            tensors[f"mask/{task_index}/{name}"] = pack_bits(unit_bool(state.masks[i], isolator.units[i]))
            tensors[f"patience/{task_index}/{name}"] = state.patience_counters[i].contiguous()
            if state.importance is not None:
                tensors[f"importance/{task_index}/{name}"] = state.importance[i].contiguous()
        replay_meta = None
        if state.replay is not None:
            tensors.update(state.replay.tensors(f"replay/{task_index}"))
            replay_meta = state.replay.meta()
        tasks_meta.append({"name": state.name, "steps": state.steps, "steps_since_refresh": state.steps_since_refresh,
                           "has_mask": state.has_mask, "frozen": state.frozen,
                           "changed_since_record": state.changed_since_record,
                           "has_importance": state.importance is not None, "replay": replay_meta,
                           "replays": state.replays})
    meta = {"format_version": STATE_FORMAT_VERSION, "config": isolator.config.to_dict(),
            "step_count": isolator.step_count, "refresh_count": isolator.refresh_count,
            "param_names": isolator.param_names, "tasks": tasks_meta}
    return tensors, meta


def load_state_dict(isolator, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    if meta.get("format_version") != STATE_FORMAT_VERSION:
        raise ValueError(f"EPI state format {meta.get('format_version')!r} is not supported "
                         f"(this version reads format {STATE_FORMAT_VERSION})")
    if meta["param_names"] != isolator.param_names:
        raise ValueError("EPI state does not match this model: its trainable parameter names differ")
    saved_config = EPIConfig.from_dict(meta["config"])
    for key in ("method", "granularity", "importance_dtype"):
        if getattr(saved_config, key) != getattr(isolator.config, key):
            raise ValueError(f"EPI state was saved with {key}={getattr(saved_config, key)!r}, "
                             f"this run uses {getattr(isolator.config, key)!r}")
    isolator.tasks = {}
    params = isolator.params
    for task_index, task_meta in enumerate(meta["tasks"]):
        state = isolator.register_task(task_meta["name"])
        for attr in ("steps", "steps_since_refresh", "has_mask", "frozen", "changed_since_record", "replays"):
            setattr(state, attr, task_meta[attr])

        def take(kind: str, i: int) -> torch.Tensor:
            return tensors[f"{kind}/{task_index}/{isolator.param_names[i]}"].to(params[i].device)

        state.masks = [torch.nonzero(unpack_bits(take("mask", i), isolator.units[i])).squeeze(1).int()
                       for i in range(len(params))]
        state.patience_counters = [take("patience", i) for i in range(len(params))]
        state.importance = ([take("importance", i) for i in range(len(params))]
                            if task_meta["has_importance"] else None)
        if task_meta["replay"] is not None and state.replay is not None:
            state.replay.load(tensors, f"replay/{task_index}", task_meta["replay"], params[0].device)
    isolator.step_count = meta["step_count"]
    isolator.refresh_count = meta["refresh_count"]
    isolator.masks_changed(None)


def save(isolator, directory: str | os.PathLike) -> None:
    """Write ``epi_state.safetensors`` + ``epi_state.json`` into ``directory`` (atomically)."""
    tensors, meta = state_dict(isolator)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / STATE_TENSORS_FILE, safetensors_bytes({k: v.cpu() for k, v in tensors.items()}))
    atomic_write_text(directory / STATE_META_FILE, json.dumps(meta, indent=1))


def load(isolator, directory: str | os.PathLike) -> None:
    directory = Path(directory)
    meta_path, tensor_path = directory / STATE_META_FILE, directory / STATE_TENSORS_FILE
    if not meta_path.is_file() or not tensor_path.is_file():
        raise FileNotFoundError(f"{directory}: no EPI state ({STATE_META_FILE} + {STATE_TENSORS_FILE})")
    load_state_dict(isolator, load_file(str(tensor_path)), json.loads(meta_path.read_text()))


def has_saved_state(directory: str | os.PathLike) -> bool:
    return (Path(directory) / STATE_META_FILE).is_file() and (Path(directory) / STATE_TENSORS_FILE).is_file()
