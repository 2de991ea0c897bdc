"""EPI under DistributedDataParallel: 2 CPU processes (gloo) get identical masks; protected elements stay put."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from sft_core.epi import EPIConfig, attach_epi

WORLD_SIZE = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_rank(rank: int, port: int, output_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        # without the rank-0 broadcast, identity rests on all-reduced gradients + deterministic ties
        for sync_masks in (False, True):
            train_and_record(rank, output_dir, sync_masks)
    finally:
        dist.destroy_process_group()


def train_and_record(rank: int, output_dir: str, sync_masks: bool) -> None:
    torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts them)
    model = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.Tanh(), torch.nn.Linear(24, 3))
    ddp_model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp_model.parameters(), lr=1e-2, weight_decay=0.1)
    config = EPIConfig(method="epi", isolation_ratio=0.2, warmup_steps=2, update_interval=2,
                       sync_masks_across_ranks=sync_masks)
    isolator = attach_epi(model, optimizer, config)
    generator = torch.Generator().manual_seed(1000 + rank)  # each rank sees different data
    protected_checked = 0
    for step, task in enumerate(["a", "a", "b", "a", "b", "b", "a", "b"] * 3):
        inputs = torch.randn(6, 12, generator=generator)
        targets = torch.cos(inputs[:, :3] * (1.0 if task == "a" else -2.0))
        torch.nn.functional.mse_loss(ddp_model(inputs), targets).backward()
        before = [p.detach().clone() for p in model.parameters()]
        isolator.step(task)
        optimizer.zero_grad()
        for (name, param), old in zip(model.named_parameters(), before):
            protected = isolator.protected_for(task, name).expand_as(param)
            if not torch.equal(param.detach()[protected], old[protected]):
                raise AssertionError(f"rank {rank} step {step}: protected element of {name} moved")
            protected_checked += int(protected.sum())
    if protected_checked == 0:
        raise AssertionError("nothing was protected: the test would be vacuous")
    tensors = {f"mask/{task}/{i}": mask for task, state in isolator.tasks.items()
               for i, mask in enumerate(state.masks)}
    tensors.update({f"param/{name}": p.detach().contiguous() for name, p in model.named_parameters()})
    save_file(tensors, os.path.join(output_dir, f"sync{int(sync_masks)}-rank{rank}.safetensors"))


def test_ddp_ranks_hold_identical_masks_and_protected_elements_stay(tmp_path):
    mp.spawn(run_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    for sync in (0, 1):
        rank0, rank1 = (load_file(str(tmp_path / f"sync{sync}-rank{r}.safetensors")) for r in range(WORLD_SIZE))
        assert rank0.keys() == rank1.keys()
        masks = [key for key in rank0 if key.startswith("mask/")]
        assert masks and any(int(rank0[key].sum()) > 0 for key in masks)
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), f"sync_masks={bool(sync)}: {key} differs between ranks"
