"""torchrun worker: rank 1 alone gets a NaN loss at step 2; both ranks must stop there.

Usage: torchrun --nproc_per_node 2 nonfinite_worker.py <out_dir>
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository (tests package)

import torch.distributed as dist  # noqa: E402

from clse import distributed  # noqa: E402
from clse.train import loop  # noqa: E402
from tests.train.test_train_loop import compose_cfg  # noqa: E402


def main(out: Path) -> None:
    distributed.init_from_env("cpu")
    real, calls = loop.pair_losses, {"n": 0}

    def poisoned(comp, a, b, groups):
        calls["n"] += 1
        loss, terms = real(comp, a, b, groups)
        if dist.get_rank() == 1 and calls["n"] == 2:
            loss = loss * float("nan")
        return loss, terms

    loop.pair_losses = poisoned
    cfg = compose_cfg(["trainer.steps=4", "trainer.checkpoint_every=1", "objective=none",
                       "alignment=contrastive", "regularizer=none", "pooling=mean"])
    rank = dist.get_rank()
    try:
        loop.train(cfg, out / "run")
        result = "finished"
    except loop.NonFiniteError as exc:
        result = f"stopped: {exc}"
    (out / f"rank{rank}.txt").write_text(result)
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
