"""Contrastive losses under DDP (two gloo processes) equal the single-process loss on the
concatenated batch: loss value, gradients of the vectors, and DDP parameter gradients."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clse_plugins.additive_margin import additive_margin
from clse_plugins.contrastive import ContrastiveAlignment, info_nce

sys.path.insert(0, str(Path(__file__).parent))
from gathered_loss_worker import CASES, global_batch, losses  # noqa: E402

WORKER = Path(__file__).with_name("gathered_loss_worker.py")
LOSSES = losses()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, list[dict]]:
    """Every case of the worker, from one ``torchrun --nproc_per_node 2`` launch (gloo, CPU)."""
    out = tmp_path_factory.mktemp("ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {case: [torch.load(out / f"{case}.rank{r}.pt") for r in range(2)] for case in CASES}


@pytest.mark.parametrize("loss", ["contrastive", "additive_margin"])
def test_two_gloo_ranks_equal_the_concatenated_batch(results, loss):
    ranks = results[loss]
    x_a, x_b, keys = global_batch()
    a, b = x_a.clone().requires_grad_(), x_b.clone().requires_grad_()
    want = LOSSES[loss](a, b, group_ids=keys)  # one process: the whole batch
    want.backward()

    # the mean of the ranks' losses is the loss of the whole batch
    got = torch.stack([r["loss"] for r in ranks]).mean()
    torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-6)
    # each rank's vectors get the gradient of the summed rank losses = world_size × the
    # gradient of the whole-batch mean; DDP's averaging over ranks divides it back
    for r in ranks:
        lo, hi = r["rows"]
        torch.testing.assert_close(r["grad_a"], 2 * a.grad[lo:hi], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["grad_b"], 2 * b.grad[lo:hi], rtol=1e-5, atol=1e-6)

    # DDP: parameter gradients are those of one process on the concatenated batch
    torch.manual_seed(1)
    layer = torch.nn.Linear(8, 6)
    LOSSES[loss](layer(x_a), layer(x_b), group_ids=keys).backward()
    for r in ranks:
        torch.testing.assert_close(r["weight_grad"], layer.weight.grad, rtol=1e-5, atol=1e-6)


def test_unequal_shards_give_each_rank_its_rows_against_the_global_batch(results):
    ranks = results["contrastive_unequal"]
    x_a, x_b, keys = global_batch()
    for r in ranks:
        lo, hi = r["rows"]
        want = info_nce(x_a, x_b, temperature=0.1, group_ids=keys, query_rows=slice(lo, hi))
        torch.testing.assert_close(r["loss"], want, rtol=1e-6, atol=1e-6)
    # weighted by rows, the ranks' losses make up the whole batch's loss
    sizes = [r["rows"][1] - r["rows"][0] for r in ranks]
    total = sum(r["loss"] * n for r, n in zip(ranks, sizes)) / sum(sizes)
    torch.testing.assert_close(total, info_nce(x_a, x_b, temperature=0.1, group_ids=keys),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fn", [info_nce, additive_margin])
def test_query_rows_split_the_loss_of_the_batch(fn):
    """One process: the loss over row blocks, averaged, is the loss of the batch."""
    x_a, x_b, keys = global_batch()
    whole = fn(x_a, x_b, group_ids=keys)
    parts = [fn(x_a, x_b, group_ids=keys, query_rows=slice(lo, hi))
             for lo, hi in ((0, 5), (5, 10))]
    torch.testing.assert_close(torch.stack(parts).mean(), whole, rtol=1e-6, atol=1e-6)


def test_without_a_process_group_gathering_is_the_identity():
    from clse import distributed

    x = torch.randn(3, 4, requires_grad=True)
    gathered, rows = distributed.gather_rows(x)
    assert gathered is x and rows == slice(0, 3)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    x_a, x_b, keys = global_batch()
    torch.testing.assert_close(ContrastiveAlignment(temperature=0.1)(x_a, x_b, group_ids=keys),
                               info_nce(x_a, x_b, temperature=0.1, group_ids=keys))
