"""Faults during long runs (issue 13): resume with other settings, partial logs, failed validation,
failed loads, I/O errors. Toy model, single process, seconds each."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from llmva_gebc.engine import checkpointing as ckpt
from llmva_gebc.engine.trainer import Runner
from train_toy import ToyCaptioner, ToyDataset, toy_config, toy_datasets


def _records(run_dir: Path, kind: str):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def _toy_model(seed: int = 0) -> ToyCaptioner:
    torch.manual_seed(seed)
    return ToyCaptioner()


def _run(cfg, model=None, datasets=None) -> Runner:
    r = Runner(cfg, model=model or _toy_model(), datasets=datasets or toy_datasets())
    r.train()
    return r


class _Interrupt(Exception):
    pass


class _Recording(ToyDataset):
    """A toy training set that records which samples were loaded."""

    def __init__(self, n: int) -> None:
        super().__init__(n, True)
        self.seen: list = []

    def __getitem__(self, i: int):
        self.seen.append(int(i))
        return super().__getitem__(i)


def _die_after_step(monkeypatch, step: int) -> None:
    real_save = ckpt.save_checkpoint

    def save_then_die(target, weights, state):
        out = real_save(target, weights, state)
        if state["global_step"] == step:
            raise _Interrupt()
        return out

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)


def test_resume_with_larger_batch_trains_every_sample_of_the_epoch_once(tmp_path, monkeypatch, caplog):
    # 68 samples: batch 4 -> 17 batches; killed after step 5 (20 samples), resumed with batch 8:
    # the 48 samples left are 6 batches of 8. Counting batches instead would skip 24 samples.
    common = dict(max_epoch=1, save_every_steps=5, evaluate_each_epoch=False)
    first = _Recording(68)
    _die_after_step(monkeypatch, 5)
    with pytest.raises(_Interrupt):
        _run(toy_config(tmp_path, batch_size_train=4, **common), datasets={"train": first, "val": None, "test": None})
    monkeypatch.undo()
    assert len(first.seen) == 20
    last = tmp_path / "out" / "toy" / "checkpoint_last"
    _, st, _ = ckpt.load_checkpoint(last)
    assert (st["samples_in_epoch"], st["batch_size_train"]) == (20, 4)

    second = _Recording(68)
    with caplog.at_level(logging.WARNING, logger="llmva_gebc.train"):
        r = _run(toy_config(tmp_path, batch_size_train=8, resume=str(last), **common),
                 datasets={"train": second, "val": None, "test": None})
    assert "continues after its first 20 samples with 6 batches of 8" in caplog.text
    trained = first.seen + second.seen
    assert sorted(trained) == list(range(68))  # each sample exactly once, none skipped
    assert r.global_step == 5 + 6
    assert [x["step"] for x in _records(r.run_dir, "train")] == list(range(1, 12))


def test_resume_restores_epoch_loss_and_drops_a_partial_log_line(tmp_path, monkeypatch, caplog):
    common = dict(max_epoch=2, save_every_steps=5)
    full = _run(toy_config(tmp_path / "a", **common))
    _die_after_step(monkeypatch, 10)  # mid-epoch 1 (16 steps per epoch)
    cfg_b = toy_config(tmp_path / "b", **common)
    with pytest.raises(_Interrupt):
        _run(cfg_b)
    monkeypatch.undo()
    run_b = Path(cfg_b.run.output_dir) / "toy"
    with open(run_b / "metrics.jsonl", "a") as f:  # what a kill in the middle of a write leaves
        f.write('{"type": "train", "step": 11, "lo')
    with caplog.at_level(logging.WARNING, logger="llmva_gebc.train"):
        resumed = _run(toy_config(tmp_path / "b", resume=str(run_b / "checkpoint_last"), **common))
    assert "metrics.jsonl: its last line is not valid JSON" in caplog.text
    ea, eb = _records(full.run_dir, "epoch"), _records(resumed.run_dir, "epoch")
    assert [e["train_loss"] for e in eb] == [e["train_loss"] for e in ea]  # exact: same steps, same order
    assert [e["val_loss"] for e in eb] == [e["val_loss"] for e in ea]
    assert _records(resumed.run_dir, "train") == [
        {**r, "samples_per_s": x["samples_per_s"]} for r, x in zip(_records(full.run_dir, "train"),
                                                                     _records(resumed.run_dir, "train"))]


def test_failed_validation_keeps_the_epoch_and_resume_reruns_it(tmp_path, monkeypatch):
    full = _run(toy_config(tmp_path / "a", max_epoch=2))
    calls = {"n": 0}
    real_validate = Runner._validate

    def validate_fails_once(self):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's validation
            raise RuntimeError("scorer crashed")
        return real_validate(self)

    monkeypatch.setattr(Runner, "_validate", validate_fails_once)
    cfg_b = toy_config(tmp_path / "b", max_epoch=2)
    with pytest.raises(RuntimeError, match="scorer crashed"):
        _run(cfg_b)
    monkeypatch.undo()
    run_b = Path(cfg_b.run.output_dir) / "toy"
    _, st, _ = ckpt.load_checkpoint(run_b / "checkpoint_last")
    assert (st["epoch"], st["global_step"], st["pending_validation"]["epoch"]) == (2, 32, 1)
    resumed = _run(toy_config(tmp_path / "b", max_epoch=2, resume=str(run_b / "checkpoint_last")))
    assert resumed.global_step == 32  # no training step repeated: only the validation ran
    strip = [{k: v for k, v in e.items()} for e in _records(full.run_dir, "epoch")]
    assert _records(resumed.run_dir, "epoch") == strip
    a, b = full.model.trainable_state_dict(), resumed.model.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    _, st, _ = ckpt.load_checkpoint(run_b / "checkpoint_last")
    assert st["pending_validation"] is None
