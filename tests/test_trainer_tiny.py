"""The training engine on the real tiny model (``train_configs/tiny.yaml``) with the sample annotations
of ``tests/data`` and random features: train, validate (generate + score), keep best/last, predict test."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llmva_gebc.engine import checkpointing as ckpt
from llmva_gebc.engine.trainer import train

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def feats_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_feats")
    vids = json.loads((DATA / "video_info.sample.json").read_text())
    rng = np.random.default_rng(0)
    for v in vids:
        np.save(d / f"{v}.npy", rng.standard_normal((4, 4, 32)).astype(np.float32))  # (T, Q, H) of tiny.yaml
    test = json.loads((DATA / "test_timestamp.sample.json").read_text())
    (d / "test_small.json").write_text(json.dumps(dict(list(test.items())[:4])))  # keeps test generation short
    return d


def tiny_options(feats_dir: Path, out: Path, *extra: str):
    return [
        f"datasets.gebc.annotations.train={DATA / 'valset_highest_f1.sample.json'}",
        f"datasets.gebc.annotations.val={DATA / 'valset_highest_f1.sample.json'}",
        f"datasets.gebc.annotations.test={feats_dir / 'test_small.json'}",
        f"datasets.gebc.video_info={DATA / 'video_info.sample.json'}",
        f"datasets.gebc.features_dir={feats_dir}",
        f"run.output_dir={out}", "run.max_eval_boundaries=10", "run.log_every=1", *extra,
    ]


@pytest.mark.slow
def test_tiny_config_trains_validates_and_predicts(tiny_cfg_factory, feats_dir, tmp_path):
    cfg = tiny_cfg_factory("opt", *tiny_options(feats_dir, tmp_path, "run.max_epoch=2", "run.batch_size_train=32",
                                                "run.init_lr=3e-3"))
    run_dir = train(cfg)
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["type"] == "train"]
    assert len(losses) == 2 * (426 // 32)  # 142 boundaries with video_info x 3 types; partial batch dropped
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    epochs = [r for r in recs if r["type"] == "epoch"]
    assert len(epochs) == 2 and all("CIDEr" in e and "agg_metrics" in e for e in epochs)
    assert epochs[-1]["best_metric"] == "agg_metrics"
    w, st, _ = ckpt.load_checkpoint(run_dir / "checkpoint_best")
    assert st["best_value"] == max(e["agg_metrics"] for e in epochs)
    assert all(v.dtype == torch.float32 for v in w.values())
    sub = json.loads((run_dir / "submission_test.json").read_text())
    n_test = sum(len(v) for v in json.loads((feats_dir / "test_small.json").read_text()).values())
    assert len(sub) == n_test and all(set(c) == {"Subject", "Status_Before", "Status_After"} for c in sub.values())
    summary = [r for r in recs if r["type"] == "summary"][0]
    assert summary["test_submission"].endswith("submission_test.json")


def test_share_prefix_training_groups_boundaries(tiny_cfg_factory, feats_dir, tmp_path):
    """run.share_prefix: batches hold whole boundaries, the shared loss equals the unshared one on the
    same batch, and a short run trains through the shared path."""
    from llmva_gebc.engine.trainer import Runner

    cfg = tiny_cfg_factory("opt", *tiny_options(
        feats_dir, tmp_path, "run.max_steps=3", "run.batch_size_train=6", "run.evaluate_each_epoch=false",
        "run.test_splits=[]", "run.valid_splits=[]", "run.share_prefix=true"))
    runner = Runner(cfg)
    runner._setup()
    assert runner.model.share_prefix is True
    batch = next(iter(runner.loader))
    ids = batch["boundary_id"]
    assert ids[0::3] == ids[1::3] == ids[2::3]
    assert batch["type"][:3] == ["subject", "status_before", "status_after"]
    runner.model.eval()  # no dropout: the two paths see the same numbers
    with torch.no_grad():
        shared = runner.model(batch)["loss"].item()
        unshared = runner.model(batch, share_prefix=False)["loss"].item()
    assert shared == pytest.approx(unshared, rel=1e-5)
    cfg.run.overwrite = True  # the runner above set the run directory up: a new run must say so
    run_dir = train(cfg)
    losses = [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["type"] == "train"]
    assert len(losses) == 3 and all(np.isfinite(losses))
