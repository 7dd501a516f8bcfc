"""Run by ``torchrun --nproc_per_node 2`` from ``test_gathered_losses.py`` (gloo, CPU).

Every rank takes its shard of one fixed global batch (shards of unequal size when asked, and a
sentence repeated across ranks), computes the gathered alignment loss, runs backward, and saves
its loss, its input gradients and the gradient of a DDP-wrapped linear layer to
``<out>/<case>.rank<r>.pt``, for every case of :data:`CASES` (one launch: process start-up is slow).
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist


def global_batch(n: int = 10, dim: int = 8):
    g = torch.Generator().manual_seed(0)
    x_a, x_b = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
    keys = torch.arange(2 * n, dtype=torch.long).reshape(n, 2)
    # row 7 (rank 1) repeats the English sentence of row 1 (rank 0): not a negative across
    # ranks, found from the gathered text keys (with dropout the two vectors differ)
    keys[7, 0] = keys[1, 0]
    return x_a, x_b, keys


def shard(n: int, world: int, rank: int, unequal: bool) -> slice:
    cuts = [0, 4, n] if unequal else [0, n // 2, n]
    return slice(cuts[rank], cuts[rank + 1])


CASES = {"contrastive": ("contrastive", False), "additive_margin": ("additive_margin", False),
         "contrastive_unequal": ("contrastive", True)}


def losses():
    from clse_plugins.additive_margin import AdditiveMarginAlignment
    from clse_plugins.contrastive import ContrastiveAlignment

    return {"contrastive": ContrastiveAlignment(temperature=0.1),
            "additive_margin": AdditiveMarginAlignment(scale=10.0, margin=0.2)}


def run_case(out: str, case: str, loss_name: str, unequal: bool) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    x_a, x_b, keys = global_batch()
    rows = shard(x_a.shape[0], world, rank, unequal)
    loss_fn = losses()[loss_name]

    # the loss and its gradient with respect to this rank's vectors
    a = x_a[rows].clone().requires_grad_()
    b = x_b[rows].clone().requires_grad_()
    loss = loss_fn(a, b, group_ids=keys[rows])
    loss.backward()

    # the same through a DDP model: parameter gradients averaged over ranks
    torch.manual_seed(1)
    layer = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 6))
    loss_fn(layer(x_a[rows]), layer(x_b[rows]), group_ids=keys[rows]).backward()
    torch.save({"loss": loss.detach(), "grad_a": a.grad, "grad_b": b.grad,
                "weight_grad": layer.module.weight.grad, "rows": (rows.start, rows.stop)},
               f"{out}/{case}.rank{rank}.pt")


def main(out: str) -> None:
    dist.init_process_group("gloo")
    for case, (loss_name, unequal) in CASES.items():
        run_case(out, case, loss_name, unequal)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
