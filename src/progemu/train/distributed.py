"""One process or many: ``torch.distributed`` set-up from ``torchrun``'s environment, DDP / FSDP wrapping.

``progemu train`` runs alone (no process group) or under ``torchrun --nproc_per_node N``
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT`` set): then it uses NCCL on
GPUs and gloo on CPUs, wraps the model in ``DistributedDataParallel`` (default) or FSDP2
(``fully_shard`` per decoder layer, for models whose parameters + optimiser state do not fit
one GPU). Only rank 0 logs and writes files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os

import torch

__all__ = ["DistInfo", "init_distributed", "all_reduce_sum", "barrier", "wrap_model", "no_sync", "shutdown"]


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    strategy: str = "none"  # none | ddp | fsdp

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Process group from torchrun's environment variables (none when ``WORLD_SIZE`` is unset or 1).

    ``device``: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but torch sees no CUDA device")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        torch.distributed.init_process_group(backend=backend, device_id=dev if use_cuda else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over processes (in place, returned); identity when not distributed."""
    if info.distributed:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.distributed:
        torch.distributed.barrier()


def wrap_model(module: torch.nn.Module, info: DistInfo, strategy: str = "ddp") -> torch.nn.Module:
    """DDP or FSDP2 around ``module`` (a :class:`progemu.train.objective.TargetLoss`) when distributed.

    FSDP shards each ``Emu3DecoderLayer`` and then the root, so parameters, gradients and
    optimiser state are split over the processes (ZeRO-3 equivalent).
    """
    if not info.distributed or strategy == "none":
        info.strategy = "none"
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        info.strategy = "ddp"
        device_ids = [info.local_rank] if info.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        info.strategy = "fsdp"
        for layer in module.model.model.layers:
            fully_shard(layer)
        fully_shard(module)
        return module
    raise ValueError(f"unknown distribution strategy {strategy!r}; use ddp or fsdp")


def no_sync(module: torch.nn.Module, info: DistInfo, last_micro_batch: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step (accumulation)."""
    if info.strategy == "ddp" and not last_micro_batch:
        return module.no_sync()
    if info.strategy == "fsdp" and hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(last_micro_batch)
    return contextlib.nullcontext()


def shutdown(info: DistInfo) -> None:
    if info.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
