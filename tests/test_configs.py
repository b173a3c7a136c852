"""Every shipped YAML (train_configs/, eval_configs/) loads, validates against the schema and resolves,
without building any model. New files are picked up by the glob."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import llmva_gebc  # noqa: F401  (registries)
from llmva_gebc.config import ConfigError, check_resolved, load_config
from llmva_gebc.dist import STRATEGIES
from llmva_gebc.registry import DATASETS, LR_SCHEDULERS, MODELS, RUNNERS

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted([*REPO.glob("train_configs/**/*.yaml"), *REPO.glob("eval_configs/**/*.yaml")])


def test_configs_are_shipped():
    assert any(p.parent.name == "train_configs" for p in YAMLS)
    assert any(p.name == "tiny.yaml" for p in YAMLS)


REQUIRED_ENV = re.compile(r"\$\{oc\.env:([A-Za-z_0-9]+)\}")  # no default: the user must set it


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(REPO)) for p in YAMLS])
def test_shipped_yaml_validates(path, monkeypatch):
    cfg = load_config(path)
    # variables without a default are documented as required (e.g. a downloaded LLM's directory)
    for f in [path, *path.parent.glob("*.yaml")]:
        for name in REQUIRED_ENV.findall(f.read_text()):
            monkeypatch.setenv(name, os.environ.get(name, f"/placeholder/{name}"))
    check_resolved(cfg)
    run = cfg.run
    assert run.runner in RUNNERS, run.runner
    assert run.lr_sched in LR_SCHEDULERS, run.lr_sched
    assert cfg.model.arch in MODELS, cfg.model.arch
    assert run.distributed.strategy in STRATEGIES
    assert run.amp in ("none", "fp16", "bf16") and run.nan_policy in ("stop", "skip")
    assert run.accum_grad_iters >= 1 and run.batch_size_train >= 1 and run.max_epoch >= 1
    assert run.init_lr >= run.min_lr >= 0 and len(run.betas) == 2
    for name, ds in cfg.datasets.items():
        assert ds.builder in DATASETS, f"{path}: datasets.{name}.builder={ds.builder}"
    if path.parent.name == "train_configs":
        assert cfg.datasets, f"{path}: no datasets"
        for name, ds in cfg.datasets.items():
            for split in run.train_splits:
                assert not ds.annotations or split in ds.annotations, f"{path}: datasets.{name} lacks {split}"


def test_winning_recipe_hyperparameters():
    cfg = load_config(REPO / "train_configs" / "gebc_opt13b.yaml")
    r = cfg.run
    assert (r.lr_sched, r.init_lr, r.min_lr, r.warmup_lr, r.warmup_steps) == ("linear_warmup_cosine_lr", 8e-5, 1e-5,
                                                                              1e-6, 5000)
    assert (r.weight_decay, list(r.betas), r.max_epoch, r.batch_size_train) == (0.001, [0.9, 0.999], 5, 16)
    assert r.amp == "fp16" and r.grad_clip is None and r.seed == 42


def test_bad_override_is_rejected():
    with pytest.raises(ConfigError, match="run.max_epohc"):
        load_config(REPO / "train_configs" / "tiny.yaml", ["run.max_epohc=3"])
