#!/usr/bin/env python
"""Train LLMVA-GEBC: ``python train.py --cfg-path train_configs/tiny.yaml [--options k=v ...]``, or
``python train.py --resume DIR [--options k=v ...]`` to continue a run with its own ``config.yaml``.

Multi-process: ``torchrun --nproc_per_node=N train.py --cfg-path ...`` (DDP by default,
``--options run.distributed.strategy=fsdp`` for FSDP2). See README "Training".

A new run goes into ``<run.output_dir>/<run.run_name>/``, which must not hold an earlier run:
``--resume DIR`` continues that run in its own directory, ``--overwrite`` empties it first.
User errors (config, missing inputs, run directory) print one ``error:`` line and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from llmva_gebc import cli


def build_parser() -> argparse.ArgumentParser:
    from llmva_gebc.config import add_config_args

    parser = argparse.ArgumentParser(prog="train.py", description=__doc__.splitlines()[0])
    add_config_args(parser, required=False,
                    cfg_help="YAML config (may name a `base:`); required for a new run. With --resume and no "
                             "--cfg-path, the run's own config.yaml (its --options included)")
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="checkpoint dir (or run dir: its checkpoint_last/) to continue from, in its own "
                             "run directory; = run.resume")
    parser.add_argument("--overwrite", action="store_true",
                        help="empty an existing run directory first (= run.overwrite=true)")
    cli.add_debug_arg(parser)
    return parser


def _resume_config_path(resume):
    """The run's own ``config.yaml`` for ``--resume DIR`` without ``--cfg-path``."""
    from llmva_gebc.engine.checkpointing import find_resume_dir
    from llmva_gebc.errors import UserError

    if resume is None:
        raise UserError("train.py: --cfg-path is required (for a new run; --resume DIR alone continues a run "
                        "with its own config.yaml)")
    try:
        ckpt_dir = find_resume_dir(resume)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    path = ckpt_dir.parent / "config.yaml"
    if not path.is_file():
        raise UserError(f"--resume {resume}: the run directory {ckpt_dir.parent} has no config.yaml; "
                        "give the run's config with --cfg-path")
    return str(path)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    cli.setup_logging(args.debug, level=20 if rank == 0 else 30, stream=sys.stdout,
                      fmt=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s")
    from llmva_gebc.config import check_inputs, load_config

    cfg_path = args.cfg_path if args.cfg_path is not None else _resume_config_path(args.resume)
    cfg = load_config(cfg_path, args.options)
    if args.resume is not None:
        cfg.run.resume = args.resume
    if args.overwrite:
        cfg.run.overwrite = True
    check_inputs(cfg, [*cfg.run.train_splits, *cfg.run.valid_splits, *cfg.run.test_splits])

    from llmva_gebc import dist
    from llmva_gebc.engine.trainer import train

    try:
        run_dir = train(cfg)
        if dist.is_main_process():
            print(f"run directory: {run_dir}")
    finally:
        dist.destroy()
    return 0


def main(argv=None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2 (see :mod:`llmva_gebc.cli`)."""
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
