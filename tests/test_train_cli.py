"""train.py as users run it: plain python (then --resume) and torchrun with 2 gloo processes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_trainer_tiny import feats_dir, tiny_options  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _steps(run_dir: Path):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["type"] == "train"]


def _opts(tiny_llm_dirs, feats_dir, out, *extra):
    return ["--options", f"model.llm.path={tiny_llm_dirs['opt']}",
            *tiny_options(feats_dir, out, "run.valid_splits=[]", "run.test_splits=[]", *extra)]


@pytest.mark.slow
def test_python_train_then_resume(tiny_llm_dirs, feats_dir, tmp_path):  # noqa: F811
    base = [sys.executable, str(REPO / "train.py"), "--cfg-path", str(REPO / "train_configs" / "tiny.yaml")]
    p = subprocess.run([*base, *_opts(tiny_llm_dirs, feats_dir, tmp_path, "run.max_steps=2")], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    run_dir = tmp_path / "tiny"
    assert f"run directory: {run_dir}" in p.stdout
    assert _steps(run_dir) == [1, 2]
    assert {"config.yaml", "env.json", "checkpoint_last", "checkpoint_best"} <= set(os.listdir(run_dir))
    p = subprocess.run([*base, *_opts(tiny_llm_dirs, feats_dir, tmp_path, "run.max_steps=3"), "--resume",
                        str(run_dir)], env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert _steps(run_dir) == [1, 2, 3]


def test_bad_option_fails_with_key_name(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "train.py"), "--cfg-path", str(REPO / "train_configs" / "tiny.yaml"),
                        "--options", "run.max_epoh=1"], env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "run.max_epoh" in p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_processes(tiny_llm_dirs, feats_dir, tmp_path, strategy):  # noqa: F811
    """Train 3 steps, validate (generate + score: lockstep generation under FSDP), keep checkpoints."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(REPO / "train.py"), "--cfg-path", str(REPO / "train_configs" / "tiny.yaml"),
           *_opts(tiny_llm_dirs, feats_dir, tmp_path, "run.max_steps=3", "run.valid_splits=[val]",
                  "run.max_eval_boundaries=2", f"run.distributed.strategy={strategy}")]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    run_dir = tmp_path / "tiny"
    assert _steps(run_dir) == [1, 2, 3]
    summary = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["type"] == "summary" and summary["world_size"] == 2
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in recs if r["type"] == "epoch"][-1]
    assert "CIDEr" in epoch and "val_loss" in epoch
    from llmva_gebc.engine.checkpointing import load_checkpoint

    w, st, _ = load_checkpoint(run_dir / "checkpoint_last")
    assert st["global_step"] == 3 and len(st["rng"]) == 2


@pytest.mark.slow
def test_fsdp_trains_to_the_same_weights_as_ddp_without_view_warnings(tiny_llm_dirs, feats_dir, tmp_path):  # noqa: F811
    """Two gloo processes, 3 optimizer steps, dropout on: FSDP2 and DDP end with the same adapter weights
    (so FSDP's gradients are right), and FSDP2 no longer warns that a unit "returned a view tensor"."""
    from llmva_gebc.engine.checkpointing import load_checkpoint

    weights, errs = {}, {}
    for strategy in ("ddp", "fsdp"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               str(REPO / "train.py"), "--cfg-path", str(REPO / "train_configs" / "tiny.yaml"),
               *_opts(tiny_llm_dirs, feats_dir, tmp_path, "run.max_steps=3", f"run.run_name={strategy}",
                      f"run.distributed.strategy={strategy}")]
        p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
        errs[strategy] = p.stderr
        weights[strategy], _, _ = load_checkpoint(tmp_path / strategy / "checkpoint_last")
    assert "returned a view tensor" not in errs["fsdp"]
    assert weights["ddp"].keys() == weights["fsdp"].keys()
    for k, w in weights["ddp"].items():
        torch.testing.assert_close(weights["fsdp"][k], w, rtol=1e-4, atol=1e-6, msg=k)
