import argparse
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llmva_gebc.config import ConfigError, add_config_args, load_config, save_config

REPO = Path(__file__).resolve().parents[1]


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_inheritance_is_a_small_diff():
    big = load_config(REPO / "train_configs/gebc_opt13b.yaml")
    small = load_config(REPO / "train_configs/gebc_opt6.7b.yaml")
    assert small.model.llm.path.endswith("opt-6.7b") and big.model.llm.path.endswith("opt-13b")
    assert small.run.init_lr == big.run.init_lr == 8e-5 and small.model.adapter == big.model.adapter
    assert len((REPO / "train_configs/gebc_opt6.7b.yaml").read_text().splitlines()) < 10


def test_unknown_key_names_full_path_and_file(tmp_path):
    base = _write(tmp_path / "base.yaml", "model:\n  adapter:\n    hidden_size: 64\n")
    bad = _write(tmp_path / "bad.yaml", "base: base.yaml\nmodel:\n  adapter:\n    hiden_size: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.adapter.hiden_size' in .*bad.yaml; known keys there: hidden_size"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"unknown config key 'run.maxepoch' in --options"):
        load_config(base, ["run.maxepoch=2"])
    with pytest.raises(ConfigError, match=r"bad value for config key 'run.max_epoch'"):
        load_config(base, ["run.max_epoch=many"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(base, ["run.max_epoch"])


def test_options_override_and_alias(tmp_path):
    ap = argparse.ArgumentParser()
    add_config_args(ap)
    a = ap.parse_args(["--cfg-path", "x.yaml", "--cfg-options", "run.max_epoch=1", "model.llm.dtype=bf16"])
    b = ap.parse_args(["--cfg-path", "x.yaml", "--options", "run.max_epoch=1", "model.llm.dtype=bf16"])
    assert a.options == b.options == ["run.max_epoch=1", "model.llm.dtype=bf16"]
    cfg = load_config(REPO / "train_configs/tiny.yaml", a.options)
    assert cfg.run.max_epoch == 1 and cfg.model.llm.dtype == "bf16"


def test_base_cycle_and_missing_file(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_null_dataset_drops_inherited_one():
    cfg = load_config(REPO / "train_configs/stage2_videochat.yaml")
    assert list(cfg.datasets) == ["videochat_instruct"]
    assert cfg.datasets.videochat_instruct.builder == "videochat_instruct"


def test_env_paths_and_resolved_save(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMVA_DATA", "/data/gebc")
    cfg = load_config(REPO / "train_configs/gebc_opt13b.yaml")
    assert cfg.datasets.gebc.features_dir == "/data/gebc/features/blip2"
    save_config(cfg, tmp_path / "run" / "config.yaml")
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert saved.datasets.gebc.features_dir == "/data/gebc/features/blip2"  # resolved, no ${...}
    assert "${" not in (tmp_path / "run" / "config.yaml").read_text()


def test_no_shipped_config_points_at_a_machine():
    for f in sorted((REPO / "train_configs").glob("*.yaml")) + sorted((REPO / "eval_configs").glob("*.yaml")):
        text = f.read_text()
        for bad in ("/home/", "/work/", "/mnt/", "/data/", "/root/", "/tmp/"):
            assert bad not in text, f"{f.name} mentions {bad}"
