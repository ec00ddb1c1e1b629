"""Data-parallel training across processes (torchrun), for every method — LAKD's local backward included.

We do not wrap the model in ``DistributedDataParallel``: its reducer expects one backward per forward, while
LAKD's ``backward: local`` runs one backward per module. Instead each rank runs its own step on its shard of the
global batch, then the gradients of all learnable parameters are averaged with one flat all-reduce before the
optimizer step — the same update as one process on the whole batch, for any number of backward calls.

BatchNorm must see the global batch too, or ranks normalise with different statistics than a single process
would: ``sync_batchnorm`` swaps every BatchNorm for ``nn.SyncBatchNorm`` on GPUs and, on CPU (where PyTorch's
SyncBatchNorm refuses to run), for ``GlobalBatchNorm2d`` below, which all-reduces per-channel sums.

``data.batch_size`` is the *global* batch: each of N ranks trains on batch_size / N images per step. Only rank 0
evaluates, prints and writes files; metrics are averaged over ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lakd.errors import LakdError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistEnv()


def env_from_torchrun() -> DistEnv:
    """Rank / world size / local rank as set by torchrun (single process when absent)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise LakdError(f"bad torchrun environment (WORLD_SIZE / RANK / LOCAL_RANK): {exc}") from None
    return DistEnv(rank, world, local)


def init_process_group(env: DistEnv, device: torch.device) -> None:
    """Join the torchrun job: NCCL between GPUs, gloo on CPU (rendezvous from torchrun's environment)."""
    if not env.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers everywhere (ranks start identical even if their RNGs differ)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """Mean of every parameter's gradient over ranks, in one flat all-reduce (missing grads count as zero)."""
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over ranks (metrics, stop requests)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class _GlobalSums(torch.autograd.Function):
    """All-reduce (sum) that passes gradients through: d(sum over ranks)/d(local) = all-reduced upstream grad."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        g = grad.clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (all ranks), on any device."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device)
        # Two passes (global mean, then global sum of squared deviations), as BatchNorm itself: E[x^2] - E[x]^2
        # loses precision when a channel's variance is small next to its mean.
        total = _GlobalSums.apply(torch.cat([xf.sum(dim=(0, 2, 3)), count]))
        n = total[-1]
        mean = total[:c] / n
        var = _GlobalSums.apply((xf - mean[None, :, None, None]).square().sum(dim=(0, 2, 3))) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d in ``module`` computes global-batch statistics (weights and buffers kept)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm2d):
            bn = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            bn.to(device=next(iter(child.state_dict().values())).device)
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            sync_batchnorm(child, device)
    return module
