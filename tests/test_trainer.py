"""Single-process training runs of the engine on the toy model (seconds each)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llmva_gebc.engine import checkpointing as ckpt
from llmva_gebc.engine import trainer as trainer_mod
from llmva_gebc.engine.trainer import NonFiniteLossError, Runner, train
from train_toy import Killed, ToyCaptioner, die_after_checkpoint, toy_config, toy_datasets


def _records(run_dir: Path, kind: str):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def _toy_model(seed: int = 0) -> ToyCaptioner:
    torch.manual_seed(seed)  # injected models are built outside the runner's seeding
    return ToyCaptioner()


def _run(cfg, **kw) -> Runner:
    r = Runner(cfg, model=kw.pop("model", None) or _toy_model(), datasets=kw.pop("datasets", None) or toy_datasets(),
               **kw)
    r.train()
    return r


def test_training_lowers_loss_and_writes_run_dir(tmp_path):
    cfg = toy_config(tmp_path, max_epoch=4)
    r = _run(cfg)
    d = r.run_dir
    losses = [x["loss"] for x in _records(d, "train")]
    assert len(losses) == 4 * 16  # 64 samples / batch 4 per epoch
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8
    epochs = _records(d, "epoch")
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    assert epochs[-1]["best_metric"] == "val_loss"  # no generation scores for the toy data
    assert (d / "config.yaml").is_file()
    env = json.loads((d / "env.json").read_text())
    assert env["torch"] == torch.__version__.split("+")[0] or env["torch"].startswith(torch.__version__.split("+")[0])
    assert "git_commit" in env
    for name in ("checkpoint_last", "checkpoint_best"):
        weights, state, _ = ckpt.load_checkpoint(d / name)
        assert set(weights) == {n for n, _ in r.model.trainable_parameters()}
        assert state["global_step"] == 64 or name == "checkpoint_best"
    _, last, _ = ckpt.load_checkpoint(d / "checkpoint_last")
    assert last["epoch"] == 4 and last["batch_in_epoch"] == 0
    summary = _records(d, "summary")[0]
    assert summary["steps"] == 64 and summary["skipped_steps"] == 0
    # frozen LLM untouched, trainable fp32
    assert all(p.dtype == torch.float32 for _, p in r.model.trainable_parameters())


def test_weight_decay_groups_and_lr_schedule_applied(tmp_path):
    cfg = toy_config(tmp_path, max_epoch=1, weight_decay=0.5)
    r = _run(cfg)
    groups = r.optimizer.param_groups
    assert {g["weight_decay"] for g in groups} == {0.5, 0.0}
    for g in groups:
        assert all((p.ndim >= 2) == (g["weight_decay"] == 0.5) for p in g["params"])
    lrs = [x["lr"] for x in _records(r.run_dir, "train")]
    # record of step s+1 holds the lr used for update s
    assert lrs[0] == pytest.approx(1e-3) and lrs[3] == pytest.approx(5e-2)
    assert lrs[-1] == pytest.approx(r.scheduler.lr_at(15))


def test_grad_accumulation_counts_optimizer_steps(tmp_path):
    cfg = toy_config(tmp_path, max_epoch=1, accum_grad_iters=3)
    r = _run(cfg)
    assert r.steps_per_epoch == 6  # 16 batches -> 5 full windows + 1 partial
    assert [x["step"] for x in _records(r.run_dir, "train")] == list(range(1, 7))


def test_resume_mid_epoch_matches_uninterrupted(tmp_path, monkeypatch):
    common = dict(max_epoch=2, save_every_steps=5, grad_clip=1.0, accum_grad_iters=2)
    full = _run(toy_config(tmp_path / "a", **common))
    full_losses = [(x["step"], x["loss"]) for x in _records(full.run_dir, "train")]
    assert len(full_losses) == 16

    # Run B is killed right after its step-10 checkpoint (mid-epoch 1: epoch 0 has 8 steps).
    die_after_checkpoint(monkeypatch, 10)
    cfg_b = toy_config(tmp_path / "b", **common)
    with pytest.raises(Killed):
        _run(cfg_b)
    monkeypatch.undo()
    _, st, _ = ckpt.load_checkpoint(Path(cfg_b.run.output_dir) / "toy" / "checkpoint_last")
    assert (st["epoch"], st["batch_in_epoch"], st["global_step"]) == (1, 4, 10)

    # Resume in the same run dir. The frozen part comes from the same pretrained weights; the trainable
    # part is scrambled to show it is restored from the checkpoint.
    model_c = _toy_model(0)
    with torch.no_grad():
        for _, p in model_c.trainable_parameters():
            p.add_(torch.randn_like(p))
    cfg_c = toy_config(tmp_path / "b", resume=str(Path(cfg_b.run.output_dir) / "toy" / "checkpoint_last"), **common)
    resumed = _run(cfg_c, model=model_c, datasets=toy_datasets())
    res_losses = [(x["step"], x["loss"]) for x in _records(resumed.run_dir, "train")]
    assert res_losses == full_losses  # exact, float equality
    a, b = full.model.trainable_state_dict(), resumed.model.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert all(torch.equal(sa["state"][i]["exp_avg_sq"], sb["state"][i]["exp_avg_sq"]) for i in sa["state"])


def test_nan_loss_stops_with_step_and_boundary_ids(tmp_path):
    cfg = toy_config(tmp_path, max_epoch=1, seed=3)
    data = toy_datasets(nan_at=21)
    with pytest.raises(NonFiniteLossError) as e:
        _run(cfg, datasets=data)
    msg = str(e.value)
    assert "toy021/subject" in msg
    # the step is the one whose batch holds sample 21 in epoch 0's seeded order
    from llmva_gebc.dist import EpochBatchSampler

    s = EpochBatchSampler(64, 4, seed=3)
    step = next(i for i, b in enumerate(s) if 21 in [j for j, _ in b])
    assert f"global step {step} " in msg


def test_nan_loss_skip_policy_counts(tmp_path):
    cfg = toy_config(tmp_path, max_epoch=2, nan_policy="skip")
    r = _run(cfg, datasets=toy_datasets(nan_at=5))
    assert r.skipped_steps == 2  # once per epoch
    assert r.global_step == 2 * 16 - 2
    assert len(_records(r.run_dir, "skipped")) == 2
    assert _records(r.run_dir, "summary")[0]["skipped_steps"] == 2
    assert all(torch.isfinite(p).all() for _, p in r.model.trainable_parameters())


def test_bf16_autocast_and_fp16_falls_back_to_fp32_on_cpu(tmp_path, caplog):
    cfg = toy_config(tmp_path, max_epoch=1, amp="fp16")
    with caplog.at_level("WARNING", logger="llmva_gebc.train"):
        r = _run(cfg)
    assert r.amp_dtype is None and not r.scaler.is_enabled()
    assert "fp16 is not useful on CPU" in caplog.text
    assert all(p.dtype == torch.float32 for _, p in r.model.trainable_parameters())
    r = _run(toy_config(tmp_path / "bf16", max_epoch=1, amp="bf16"))
    assert r.amp_dtype == torch.bfloat16 and not r.scaler.is_enabled()
    assert all(p.dtype == torch.float32 for _, p in r.model.trainable_parameters())


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tb(name, *a, **kw):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    from llmva_gebc.errors import UserError

    with pytest.raises(UserError, match="tensorboard"):  # one line from the CLIs, exit status 2
        _run(toy_config(tmp_path, max_epoch=1, tensorboard=True))


def test_agg_metric_sums_like_the_original():
    m = {"CIDEr": 50.0, "ROUGE_L": 30.0, "SPICE": None}
    assert trainer_mod.agg_metric(m, "agg_metrics") == 80.0
    assert trainer_mod.agg_metric(dict(m, SPICE=10.0), "agg_metrics") == 90.0
    assert trainer_mod.agg_metric(m, "CIDEr") == 50.0
    with pytest.raises(KeyError, match="BLEU"):
        trainer_mod.agg_metric(m, "BLEU")
