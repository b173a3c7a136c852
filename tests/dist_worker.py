"""Worker for tests/test_dist.py, run under ``torchrun --nproc_per_node=2`` (gloo on CPU).

``python dist_worker.py OUT STRATEGY [key=value ...]``: trains the toy model with the real runner,
then every rank writes its gathered full trainable weights to ``OUT/rank<r>.pt``.
``STALL_RANK1_AT_FORWARD=N`` in the environment: rank 1 hangs (sleeps; with ``STALL_MODE=stop`` it
stops itself with SIGSTOP) at its N-th forward, after writing the time to ``OUT/stalled_at.txt``.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llmva_gebc import dist  # noqa: E402
from llmva_gebc.engine.trainer import Runner  # noqa: E402
from train_toy import ToyCaptioner, toy_config, toy_datasets  # noqa: E402


def main() -> None:
    out, strategy = Path(sys.argv[1]), sys.argv[2]
    extra = dict(a.split("=", 1) for a in sys.argv[3:])
    timeout = extra.get("distributed.timeout_s")
    rank, _, world = dist.init_distributed(timeout_s=float(timeout) if timeout else None)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pid{rank}.txt").write_text(str(os.getpid()))  # so a test can always clean up
    assert world == 2, world
    cfg = toy_config(out / f"cfg{rank}", output_dir=str(out / "run"), **{"distributed.strategy": strategy}, **extra)
    torch.manual_seed(0)
    model = ToyCaptioner()
    stall_at = int(os.environ.get("STALL_RANK1_AT_FORWARD", "0"))
    if stall_at and rank == 1:  # a stalled rank: stops itself (SIGSTOP) at its N-th forward
        calls = [0]
        real_forward = model.forward

        def forward_then_stop(batch):
            calls[0] += 1
            if calls[0] == stall_at:
                (out / "stalled_at.txt").write_text(repr(time.time()))
                if os.environ.get("STALL_MODE") == "stop":
                    os.kill(os.getpid(), signal.SIGSTOP)
                time.sleep(3600)  # hung (a deadlock, a dead file system ...): SIGTERM still ends it
            return real_forward(batch)

        model.forward = forward_then_stop
    runner = Runner(cfg, model=model, datasets=toy_datasets())
    runner.train()
    sd = dist.full_trainable_state_dict(runner.model)
    torch.save(sd, out / f"rank{rank}.pt")
    kinds = sorted({type(p).__name__ for _, p in dist.unwrap(runner.model).trainable_parameters()})
    (out / f"param_types{rank}.txt").write_text(",".join(kinds))  # DTensor under FSDP
    dist.barrier()
    dist.destroy()


if __name__ == "__main__":
    main()
