"""datasets.<name>.sample_ratio: per-batch dataset mixing (Video-LLaMA's meaning), exact and resumable."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llmva_gebc.data.samplers import MixedDataset, MixtureBatchSampler, quotas
from llmva_gebc.engine.trainer import Runner
from train_toy import Killed, ToyCaptioner, ToyDataset, die_after_checkpoint, toy_config

REPO = Path(__file__).resolve().parents[1]


def _draws(sampler, epochs):
    out = []
    for e in range(epochs):
        sampler.set_epoch(e)
        out += [b for b in sampler]
    return out


def test_quotas_are_proportional_and_sum_up():
    assert quotas(750, [2, 1]) == [500, 250]
    assert quotas(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(quotas(101, [0.3, 2.5, 1.0])) == 101


def test_two_to_one_over_3000_samples_whatever_the_sizes():
    # dataset 0 is the SMALLER one: by size it would get 1/3 of the draws, by ratio it gets 2/3
    s = MixtureBatchSampler([700, 1400], [2.0, 1.0], batch_size=4, seed=5)
    draws = [i for b in _draws(s, 2) for i, _ in b][:3000]
    frac0 = sum(i < 700 for i in draws) / len(draws)
    assert len(draws) == 3000 and abs(frac0 - 2 / 3) <= 0.02, frac0
    # one dataset per batch
    s.set_epoch(0)
    assert all(len({i < 700 for i, _ in b}) == 1 for b in s)
    # the small dataset is repeated: every sample of it is drawn before any is drawn a second time
    s.set_epoch(0)
    first = [i for b, k in zip(s, s.dataset_order()) if k == 0 for i, _ in b]
    assert sorted(first[:700]) == list(range(700)) and len(first) == 4 * 350
    # deterministic: a new sampler gives the same epoch; another epoch a different order
    again = MixtureBatchSampler([700, 1400], [2.0, 1.0], batch_size=4, seed=5)
    assert _draws(again, 1) == _draws(s, 1)
    s.set_epoch(1)
    assert list(s) != _draws(again, 1)


def test_resume_mid_epoch_and_ddp_shards():
    s = MixtureBatchSampler([50, 30], [1.0, 3.0], batch_size=3, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_batch=7)
    assert list(s) == full[7:] and len(s) == len(full) - 7
    # two ranks: same dataset per batch position, disjoint samples within a pass, same batch count
    r0 = MixtureBatchSampler([50, 30], [1.0, 3.0], batch_size=3, rank=0, world_size=2, seed=1)
    r1 = MixtureBatchSampler([50, 30], [1.0, 3.0], batch_size=3, rank=1, world_size=2, seed=1)
    assert r0.dataset_order() == r1.dataset_order() and r0.batches_per_epoch == r1.batches_per_epoch == 13
    b0, b1 = list(r0), list(r1)
    first_pass = [i for b, k in zip(b0, r0.dataset_order()) if k == 1 for i, _ in b][:15] + \
                 [i for b, k in zip(b1, r1.dataset_order()) if k == 1 for i, _ in b][:15]
    assert sorted(first_pass) == list(range(50, 80))  # dataset 1's 30 samples, split over the ranks
    with pytest.raises(ValueError, match="positive"):
        MixtureBatchSampler([5, 5], [1.0, 0.0], batch_size=2)


class _Tagged(ToyDataset):
    """A toy dataset that records which of its samples the loader read."""

    def __init__(self, n, tag, log, seed):
        super().__init__(n, True, seed=seed)
        self.tag, self.log = tag, log

    def __getitem__(self, i):
        self.log.append((self.tag, i))
        return super().__getitem__(i)


def _mixed(log):
    return MixedDataset([_Tagged(1000, "webvid", log, 0), _Tagged(2000, "cc3m", log, 3)], ["webvid", "cc3m"],
                        [2.0, 1.0])


def _run(cfg, log):
    torch.manual_seed(0)
    r = Runner(cfg, model=ToyCaptioner(), datasets={"train": _mixed(log), "val": None, "test": None})
    r.train()
    return r


def test_training_run_draws_two_to_one_and_resumes_exactly(tmp_path, monkeypatch):
    common = dict(max_epoch=1, evaluate_each_epoch=False, save_every_steps=100, log_every=1, batch_size_train=12)
    log_a: list = []
    full = _run(toy_config(tmp_path / "a", **common), log_a)
    counts = Counter(tag for tag, _ in log_a)
    assert sum(counts.values()) == 3000  # 250 batches of 12
    assert abs(counts["webvid"] / 3000 - 2 / 3) <= 0.02, counts
    losses_a = [json.loads(x)["loss"] for x in (full.run_dir / "metrics.jsonl").read_text().splitlines()
                if json.loads(x)["type"] == "train"]

    die_after_checkpoint(monkeypatch, 100)
    cfg_b = toy_config(tmp_path / "b", **common)
    with pytest.raises(Killed):
        _run(cfg_b, [])
    monkeypatch.undo()
    log_c: list = []
    resumed = _run(toy_config(tmp_path / "b", resume=str(Path(cfg_b.run.output_dir) / "toy" / "checkpoint_last"),
                              **common), log_c)
    assert log_c == log_a[100 * 12:]  # the same samples, in the same order, after the checkpoint
    losses_c = [json.loads(x)["loss"] for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
                if json.loads(x)["type"] == "train"]
    assert losses_c == losses_a
    a, c = full.model.trainable_state_dict(), resumed.model.trainable_state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_stage1_config_builds_a_mixed_dataset(tmp_path, monkeypatch):
    from llmva_gebc.config import load_config
    from llmva_gebc.data.synthetic import encode_mp4
    from llmva_gebc.engine.trainer import build_split

    root = tmp_path / "pretrain"
    (root / "webvid" / "filter_annotation").mkdir(parents=True)
    (root / "webvid" / "filter_annotation" / "0.tsv").write_text(
        "videoid\tname\tpage_dir\n" + "".join(f"{i}\tclip {i}\tp\n" for i in range(3)))
    (root / "webvid" / "videos" / "p").mkdir(parents=True)
    for i in range(3):
        encode_mp4(np.full((6, 32, 32, 3), 40 * i, np.uint8), root / "webvid" / "videos" / "p" / f"{i}.mp4", fps=5)
    (root / "cc3m" / "image").mkdir(parents=True)
    (root / "cc3m" / "filter_cap.json").write_text(json.dumps([{"image_id": "a", "caption": "an image"}]))
    Image.new("RGB", (32, 32), (200, 10, 10)).save(root / "cc3m" / "image" / "a.jpg")
    monkeypatch.setenv("LLMVA_PRETRAIN_DATA", str(root))
    cfg = load_config(REPO / "train_configs" / "stage1_webvid_cc3m.yaml", ["model.llm.path=unused"])
    assert (cfg.datasets.webvid.sample_ratio, cfg.datasets.cc3m.sample_ratio) == (2.0, 1.0)
    ds = build_split(cfg, "train", True, True)
    assert isinstance(ds, MixedDataset) and ds.names == ["webvid", "cc3m"] and ds.sample_ratios == [2.0, 1.0]
    assert ds.sizes == [3, 1]
    cfg = load_config(REPO / "train_configs" / "stage1_webvid_cc3m.yaml",
                      ["model.llm.path=unused", "datasets.webvid.sample_ratio=null", "datasets.cc3m.sample_ratio=null"])
    assert type(build_split(cfg, "train", True, True)) is torch.utils.data.ConcatDataset
