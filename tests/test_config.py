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


@pytest.mark.parametrize("option,needle", [
    # each was accepted before: trained with it, or failed later with a traceback
    ("run.batch_size_train=-1", "'run.batch_size_train' must be an integer >= 1, got -1"),
    ("run.init_lr=-1", "'run.init_lr' must be a number >= 0, got -1.0"),
    ("run.init_lr=nan", "'run.init_lr' must be a finite number, got nan"),
    ("run.betas=[1.5,0.999]", "'run.betas.0' must be in [0, 1), got 1.5"),
    ("run.max_epoch=0", "'run.max_epoch' must be an integer >= 1, got 0"),
    ("run.num_workers=-1", "'run.num_workers' must be an integer >= 0, got -1"),
    ("run.amp=fp8", "'run.amp' must be one of none, fp16, bf16, got 'fp8'"),
    ("run.best_metric=CIDEr_D", "'run.best_metric' must be one of agg_metrics, val_loss, CIDEr"),
    ("model.generation.num_beams=0", "'model.generation.num_beams' must be an integer >= 1, got 0"),
    ("model.generation.max_length=1", "'model.generation.max_length' must be an integer >= 2, got 1"),
    ("model.adapter.hidden_dropout_prob=2", "'model.adapter.hidden_dropout_prob' must be in [0, 1), got 2.0"),
    ("model.boundary_detector.max_frames=0", "'model.boundary_detector.max_frames' must be an integer >= 4, got 0"),
    ("datasets.gebc.vis_processor.num_frames=0", "'datasets.gebc.vis_processor.num_frames' must be an integer >= 1"),
    ("datasets.gebc.max_seq_len=0", "'datasets.gebc.max_seq_len' must be an integer >= 1, got 0"),
])
def test_values_out_of_range_name_the_key_and_where_they_were_set(option, needle):
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "train_configs/tiny.yaml", [option])
    assert needle in str(e.value) and str(e.value).endswith("(in --options)"), str(e.value)


def test_values_out_of_range_in_a_file_and_every_shipped_config_passes(tmp_path):
    bad = _write(tmp_path / "bad.yaml", f"base: {REPO / 'train_configs/tiny.yaml'}\nrun:\n  batch_size_eval: 0\n")
    with pytest.raises(ConfigError, match=rf"config key 'run.batch_size_eval' must be an integer >= 1, got 0 \(in {bad}\)"):
        load_config(bad)
    for path in sorted((REPO / "train_configs").glob("*.yaml")) + sorted((REPO / "eval_configs").glob("*.yaml")):
        load_config(path)  # every shipped value is in range
    # EOS forbidden for longer than a caption may be: every caption would run to max_length
    with pytest.raises(ConfigError, match=r"'model.generation.min_length' \(50\) must be <= model.generation.max_length \(13\)"):
        load_config(REPO / "train_configs/tiny.yaml", ["model.generation.min_length=50"])
    # null means "unset" where the schema allows it; unresolved interpolations are left to check_resolved
    cfg = load_config(REPO / "train_configs/tiny.yaml", ["run.max_steps=null", "run.grad_clip=null"])
    assert cfg.run.max_steps is None and cfg.run.grad_clip is None


def test_malformed_config_files_are_one_line_errors(tmp_path):
    """Tracebacks before (a TypeError, an omegaconf MissingMandatoryValue) or a message naming key 'None'."""
    from llmva_gebc.config import check_inputs

    cases = [("base: 5\n", r"'base' must be a file name or a list of file names, got 5"),
             ("model: [1, 2]\n", r"section 'model' must be a mapping, got \[1, 2\]")]
    for i, (text, needle) in enumerate(cases):
        with pytest.raises(ConfigError, match=needle):
            load_config(_write(tmp_path / f"c{i}.yaml", text))
    empty = load_config(_write(tmp_path / "empty.yaml", ""))
    with pytest.raises(ConfigError, match=r"config key 'model.llm.path' must be set"):
        check_inputs(empty, ["train"])
