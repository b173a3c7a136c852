#!/usr/bin/env python
"""Evaluate a model on a GEBC split, or score a submission file.

Model mode (plain python or torchrun)::

    python evaluate.py --cfg-path eval_configs/X.yaml --ckpt DIR [--split val|test] [--report] [--options k=v ...]
    torchrun --nproc_per_node=N evaluate.py --cfg-path ...

writes ``predictions_<split>.json``, ``submission_<split>.json``, ``submit_<split>.pkl``,
``metrics_<split>.json`` (when the split has references) and ``report.html`` (``--report``) into
``<run.output_dir>/<run.run_name>/``. Without ``--ckpt`` (or ``model.checkpoint``) the adapter would
be random: refused unless ``--allow-untrained``, which marks the metrics ``"untrained": true``.

Score mode (no model, no torch import)::

    python evaluate.py --score submission.json|submit_val.pkl --annotations valset_highest_f1.json [--out metrics.json]

validates the submission against the annotation file and prints the metrics JSON.
"""
from __future__ import annotations

import argparse
import json
import sys

from llmva_gebc import cli


def score_main(args: argparse.Namespace) -> int:
    from llmva_gebc.eval.metrics import score_captions
    from llmva_gebc.eval.submission import (
        SubmissionError, load_submission, references_from_annotations, validate_submission, write_json,
    )

    if args.out:  # before scoring (minutes with SPICE): a folder there, a read-only disk
        from pathlib import Path

        from llmva_gebc.fileio import check_writable_dir

        if Path(args.out).is_dir():
            raise SubmissionError(f"--out {args.out} is a directory; give the metrics JSON file to write")
        check_writable_dir(Path(args.out).parent, "--out folder")
    sub = load_submission(args.score)
    refs = references_from_annotations(args.annotations)
    if refs is None:
        raise SubmissionError(f"{args.annotations}: no reference captions (a test split?); nothing to score")
    validate_submission(sub, refs.keys(), path=args.score)
    metrics = score_captions(sub, refs)
    if args.out:
        write_json(metrics, args.out)
    print(json.dumps(metrics, indent=1))
    return 0


def model_main(args: argparse.Namespace) -> int:
    from llmva_gebc.config import ConfigError, check_inputs, load_config

    cfg = load_config(args.cfg_path, args.options)
    if not args.ckpt and not cfg.model.checkpoint and not args.allow_untrained:
        raise ConfigError("no trained weights: give --ckpt RUN_DIR/checkpoint_best (or set model.checkpoint); "
                          "--allow-untrained evaluates the random adapter anyway (its metrics are marked untrained)")
    splits = sorted({s for d in cfg.datasets.values() for s in (d.annotations or {})})
    if args.split not in splits:
        raise ConfigError(f"--split {args.split}: not a split of {args.cfg_path}; its splits: {', '.join(splits)}")
    check_inputs(cfg, [args.split])

    from llmva_gebc import dist
    from llmva_gebc.engine.evaluator import run_evaluation

    try:
        metrics = run_evaluation(cfg, ckpt=args.ckpt, split=args.split, report=args.report or None,
                                 progress=not args.no_progress and cli.progress_enabled())
        if metrics is not None:
            print(json.dumps(metrics, indent=1))
    finally:  # a failed scoring (MetricsError naming what was kept), a full disk: one line via cli.run
        dist.destroy()
    return 0


def _main(argv) -> int:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--score", metavar="SUBMISSION", help="score a .json/.pkl submission (needs --annotations)")
    p.add_argument("--annotations", help="annotation JSON with reference captions (score mode)")
    p.add_argument("--out", help="also write the metrics JSON here (score mode)")
    p.add_argument("--cfg-path", help="YAML config (model mode)")
    p.add_argument("--options", "--cfg-options", dest="options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys (model mode)")
    p.add_argument("--ckpt", help="trainable weights to load (a run's checkpoint dir or .safetensors/.pth)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="evaluate without --ckpt (random adapter); the metrics are marked \"untrained\": true")
    p.add_argument("--split", default="val", metavar="{val,test,train}",
                   help="split to evaluate: a key of the config's datasets.<name>.annotations (default: val)")
    p.add_argument("--report", action="store_true", help="also write report.html")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (there is none without a terminal)")
    cli.add_debug_arg(p)
    args = p.parse_args(argv)
    cli.setup_logging(args.debug)
    if args.score:
        if args.cfg_path or not args.annotations:
            p.error("--score needs --annotations and no --cfg-path")
        return score_main(args)
    if not args.cfg_path:
        p.error("give --cfg-path (evaluate a model) or --score SUBMISSION --annotations FILE")
    return model_main(args)


def main(argv=None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2 (see :mod:`llmva_gebc.cli`)."""
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
