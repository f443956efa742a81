"""The process's place in a `torchrun` job (or a single process): rank, world, device, collectives."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @classmethod
    def from_env(cls, device="auto"):
        """Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; with WORLD_SIZE > 1 joins the process
        group (NCCL on CUDA, gloo on the CPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, local_rank, device)

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.world > 1

    def sum(self, tensor):
        """All-reduced sum (identity in a single process), on this process's device (NCCL reduces
        CUDA tensors only)."""
        if self.active:
            tensor = tensor.to(self.device, copy=True)
            dist.all_reduce(tensor)
        return tensor

    def gather(self, value):
        """Every rank's picklable `value`, in rank order (on every rank)."""
        if not self.active:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def barrier(self):
        if self.active:
            dist.barrier()

    def close(self):
        if self.active and dist.is_initialized():
            dist.destroy_process_group()
