#!/usr/bin/env python
"""Train LLMVA-GEBC: ``python train.py --cfg-path train_configs/tiny.yaml [--options k=v ...] [--resume DIR]``.

Multi-process: ``torchrun --nproc_per_node=N train.py --cfg-path ...`` (DDP by default,
``--options run.distributed.strategy=fsdp`` for FSDP2). See README "Training".
"""
from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from llmva_gebc.config import add_config_args, load_config

    add_config_args(parser)
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="checkpoint dir (or run dir: its checkpoint_last/) to continue from; = run.resume")
    args = parser.parse_args(argv)

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(stream=sys.stdout, level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s")
    import llmva_gebc  # noqa: F401  (fills the registries)
    from llmva_gebc import dist
    from llmva_gebc.engine.trainer import train

    cfg = load_config(args.cfg_path, args.options)
    if args.resume is not None:
        cfg.run.resume = args.resume
    try:
        run_dir = train(cfg)
        if dist.is_main_process():
            print(f"run directory: {run_dir}")
    finally:
        dist.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
