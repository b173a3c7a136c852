"""Worker for tests/test_dist.py, run under ``torchrun --nproc_per_node=2`` (gloo on CPU).

``python dist_worker.py OUT STRATEGY [key=value ...]``: trains the toy model with the real runner,
then every rank writes its gathered full trainable weights to ``OUT/rank<r>.pt``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llmva_gebc import dist  # noqa: E402
from llmva_gebc.engine.trainer import Runner  # noqa: E402
from train_toy import ToyCaptioner, toy_config, toy_datasets  # noqa: E402


def main() -> None:
    out, strategy = Path(sys.argv[1]), sys.argv[2]
    extra = dict(a.split("=", 1) for a in sys.argv[3:])
    rank, _, world = dist.init_distributed()
    assert world == 2, world
    cfg = toy_config(out / f"cfg{rank}", output_dir=str(out / "run"), **{"distributed.strategy": strategy}, **extra)
    torch.manual_seed(0)
    runner = Runner(cfg, model=ToyCaptioner(), datasets=toy_datasets())
    runner.train()
    sd = dist.full_trainable_state_dict(runner.model)
    torch.save(sd, out / f"rank{rank}.pt")
    kinds = sorted({type(p).__name__ for _, p in dist.unwrap(runner.model).trainable_parameters()})
    (out / f"param_types{rank}.txt").write_text(",".join(kinds))  # DTensor under FSDP
    dist.barrier()
    dist.destroy()


if __name__ == "__main__":
    main()
