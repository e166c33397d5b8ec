"""Several training processes: the process group from torchrun's environment, and a gather with gradients.

``torchrun --nproc_per_node N`` (or several machines with ``--nnodes``) sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address; ``setup`` reads them once. The backend is nccl when the process
trains on a GPU and gloo on CPUs: the training code is the same for both.

``gather_with_grad`` is what makes NT-Xent's negatives global: every process sees the projections of
the whole global batch, and the backward pass sums each process's gradient with respect to every
projection and hands each process the part for its own rows, so that with DistributedDataParallel's
gradient averaging the update equals the one-process update on the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment; one process when it describes none."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world


def teardown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather in the forward pass; in the backward pass, the sum over processes of the gradient with
    respect to the gathered tensor, sliced to this process's rows (all_reduce: every backend has it)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = (dist.get_rank() * x.shape[0], (dist.get_rank() + 1) * x.shape[0])  # type: ignore[attr-defined]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start, stop = ctx.rows  # type: ignore[attr-defined]
        return grad[start:stop]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's ``x`` (equal shapes) stacked in rank order along dim 0, differentiable, and the
    row where this process's own rows start (the ``Gather`` that ``losses.nt_xent`` takes)."""
    return _GatherWithGrad.apply(x), dist.get_rank() * x.shape[0]


def all_mean(values: dict[str, float], world: World) -> dict[str, float]:
    """The mean over processes of each value (loss terms for the log); unchanged on one process."""
    if not world.distributed:
        return values
    names = sorted(values)
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([values[k] for k in names], dtype=torch.float64, device=on)  # nccl: GPU tensors only
    dist.all_reduce(t)
    return {k: float(v) / world.size for k, v in zip(names, t.tolist(), strict=True)}
