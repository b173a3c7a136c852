"""GEBC builder: real annotation files with tiny synthetic features."""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from llmva_gebc.config import DatasetConfig, OtherFeatDataConfig
from llmva_gebc.data.collate import collate_gebc
from llmva_gebc.data.gebc import (
    TYPES, DataError, build_gebc, build_prompt, reference_points, resample_nearest,
)
from llmva_gebc.registry import DATASETS

DATA = Path(__file__).resolve().parent / "data"
FULL = Path(__file__).resolve().parents[1].parent / "shared/data/kinetics_gebc"
T, Q, H = 2, 4, 8


def _write_feats(d: Path, vids, shape=(T, Q, H)) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(sorted(vids)):
        np.save(d / f"{v}.npy", np.full(shape, i, dtype=np.float16))


def _cfg(tmp_path: Path, ann: dict, video_info: Path, **kw):
    c = OmegaConf.structured(DatasetConfig)
    c.annotations = {k: str(v) for k, v in ann.items()}
    c.video_info = str(video_info)
    c.features_dir = str(tmp_path / "feats")
    for k, v in kw.items():
        OmegaConf.update(c, k, v, merge=False)
    return c


@pytest.fixture()
def sample_cfg(tmp_path):
    vi = json.loads((DATA / "video_info.sample.json").read_text())
    _write_feats(tmp_path / "feats", vi.keys())
    return _cfg(
        tmp_path,
        {"val": DATA / "valset_highest_f1.sample.json", "test": DATA / "test_timestamp.sample.json"},
        DATA / "video_info.sample.json",
    )


def test_registered():
    assert DATASETS.get("gebc") is build_gebc


def test_prompt_matches_reference():
    assert build_prompt("Change of Color", "subject") == "This video describes the change of color.The subject is"
    assert build_prompt("Multiple", "status_after") == "This video describes the multiple.Status after change is"
    with pytest.raises(ValueError):
        build_prompt("Multiple", "caption")


def test_val_sample(sample_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="llmva_gebc.data.gebc"):
        ds = build_gebc(sample_cfg, "val", training=False, expected_hidden=H, expected_queries=Q)
    assert len(ds.boundaries) == 145
    missing = [b for b in ds.boundaries if not b["available"]]
    assert [b["boundary_id"][:11] for b in missing] == ["oc2bib7RLLo"] * len(missing) and len(missing) >= 1
    assert all(b["duration"] is None for b in missing)
    assert len(ds) == 3 * (145 - len(missing))
    assert "unavailable" in caplog.text
    # samples of a boundary are consecutive, in TYPES order, and map back to their boundary
    for i in range(0, len(ds), 3):
        bidx = ds.sample_boundary_index[i]
        assert ds.sample_boundary_index[i : i + 3] == [bidx] * 3
        assert [ds.samples[i + k][1] for k in range(3)] == list(TYPES)
    s = ds[0]
    raw = json.loads((DATA / "valset_highest_f1.sample.json").read_text())
    first = next(iter(raw.values()))[0]
    dur = json.loads((DATA / "video_info.sample.json").read_text())[first["boundary_id"][:11]]
    assert s["boundary_id"] == first["boundary_id"] and s["video_id"] == first["boundary_id"][:11]
    assert s["type"] == "subject" and s["caption"] == first["subject"]
    assert ds[2]["caption"] == first["status_after"]
    assert s["prompt"] == build_prompt(first["label"], "subject")
    assert s["q_tokens"].shape == (T, Q, H) and s["q_tokens"].dtype == torch.float32
    assert s["ref_points"].dtype == torch.float64
    expect = [first["timestamp"] / dur, (first["next_timestamp"] - first["prev_timestamp"]) / dur]
    assert s["ref_points"].tolist() == expect
    assert "other_feats" not in s


def test_training_skips_with_warning(sample_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="llmva_gebc.data.gebc"):
        ds = build_gebc(sample_cfg, "val", training=True)
    assert "skipped for training" in caplog.text
    assert all(ds.boundaries[b]["available"] for b in ds.sample_boundary_index)


def test_missing_features_file_is_unavailable(sample_cfg, tmp_path):
    gone = "yZgBQqCxJtI"
    (tmp_path / "feats" / f"{gone}.npy").unlink()
    ds = build_gebc(sample_cfg, "val", training=True)
    bad = {b["video_id"] for b in ds.boundaries if not b["available"]}
    assert bad == {gone, "oc2bib7RLLo"}
    assert gone not in {ds[i]["video_id"] for i in range(0, len(ds), 3)}


def test_test_split_has_no_captions(sample_cfg):
    ds = build_gebc(sample_cfg, "test", training=False)
    assert len(ds) == 3 * 60 and all(b["references"] is None for b in ds.boundaries)
    assert ds[0]["caption"] is None


def test_collate(sample_cfg):
    ds = build_gebc(sample_cfg, "val", training=False)
    b = collate_gebc([ds[i] for i in range(5)])
    assert b["q_tokens"].shape == (5, T, Q, H)
    assert b["ref_points"].shape == (5, 2) and b["ref_points"].dtype == torch.float64
    assert isinstance(b["prompt"], list) and len(set(map(len, b["prompt"]))) > 1  # variable prompts kept
    assert b["type"] == ["subject", "status_before", "status_after", "subject", "status_before"]
    assert b["boundary_id"][:3] == [ds[0]["boundary_id"]] * 3
    t = build_gebc(sample_cfg, "test", training=False)
    assert collate_gebc([t[0], t[1]])["caption"] == [None, None]
    odd = dict(ds[3], q_tokens=torch.zeros(T + 1, Q, H))
    with pytest.raises(ValueError, match="q_tokens"):
        collate_gebc([ds[0], odd])


def test_resample_nearest_reference_rounding():
    x = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # (5, 2)
    # positions i*4/8 = 0, .5, 1, 1.5, ..., 4 -> halves round down as scipy's interp1d 'nearest'
    assert resample_nearest(x, 9)[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert resample_nearest(x, 3)[:, 0].tolist() == [0, 2, 4]
    # positions 0, 4/3, 8/3, 4 -> 0, 1, 3, 4
    assert resample_nearest(x, 4)[:, 0].tolist() == [0, 1, 3, 4]
    one = np.array([[1.0, 2.0]], np.float32)
    assert resample_nearest(one, 4).tolist() == [[1, 2]] * 4
    assert resample_nearest(x, 2)[:, 0].tolist() == [0, 4]


def test_other_feats(sample_cfg, tmp_path):
    vi = json.loads((DATA / "video_info.sample.json").read_text())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i, v in enumerate(vi):
        np.save(tmp_path / "a" / f"{v}.npy", np.arange(3 * 5, dtype=np.float32).reshape(3, 5))
        with open(tmp_path / "b" / f"{v}.pkl", "wb") as f:
            pickle.dump(np.ones((1, 3), np.float32) * i, f)
    sample_cfg.other_feats = [OtherFeatDataConfig("intern_video", str(tmp_path / "a"), 5),
                              OtherFeatDataConfig("clip", str(tmp_path / "b"), 3)]
    sample_cfg.max_seq_len = 6
    model_other = [{"name": "intern_video", "dim": 5}, {"name": "clip", "dim": 3}]
    ds = build_gebc(sample_cfg, "val", training=True, expected_other_feats=model_other)
    o = ds[0]["other_feats"]
    assert o.shape == (6, 8) and o.dtype == torch.float32
    assert o[:, 0].tolist() == [0, 0, 5, 5, 10, 10]  # positions 0,.4,.8,1.2,1.6,2 -> 0,0,1,1,2,2
    assert collate_gebc([ds[0], ds[1]])["other_feats"].shape == (2, 6, 8)
    # unknown feature name / dim mismatch against the model: error names the config key
    with pytest.raises(DataError, match=r"unknown other feature 'clip'.*other_feats\[1\]\.name"):
        build_gebc(sample_cfg, "val", training=True, expected_other_feats=model_other[:1])
    with pytest.raises(DataError, match=r"other_feats\[0\]\.dim"):
        build_gebc(sample_cfg, "val", training=True,
                   expected_other_feats=[{"name": "intern_video", "dim": 7}, model_other[1]])
    # wrong dim in a file: error names the file and the feature
    vid = ds[0]["video_id"]
    np.save(tmp_path / "a" / f"{vid}.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(DataError, match=rf"{vid}\.npy.*'intern_video'.*\(t, 5\).*\(3, 4\)"):
        ds[0]


def test_wrong_feature_shape_names_file(sample_cfg, tmp_path):
    ds = build_gebc(sample_cfg, "val", training=True, expected_hidden=H + 1)
    vid = ds.boundaries[ds.sample_boundary_index[0]]["video_id"]
    with pytest.raises(DataError, match=rf"{vid}\.npy \(key 'q_tokens'\): expected shape \(T, Q, {H + 1}\), got \({T}, {Q}, {H}\)"):
        ds[0]
    np.save(tmp_path / "feats" / f"{vid}.npy", np.zeros((Q, H), np.float16))
    ds = build_gebc(sample_cfg, "val", training=True)
    with pytest.raises(DataError, match=rf"{vid}\.npy.*got \({Q}, {H}\)"):
        ds[0]


def test_malformed_json_and_missing_key(sample_cfg, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"abc": [ {"boundary_id": ')
    sample_cfg.annotations["val"] = str(bad)
    with pytest.raises(DataError, match=r"malformed JSON.*bad\.json"):
        build_gebc(sample_cfg, "val", training=True)
    raw = json.loads((DATA / "valset_highest_f1.sample.json").read_text())
    vid = next(iter(raw))
    bid = raw[vid][0]["boundary_id"]
    del raw[vid][0]["status_before"]
    bad.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=rf"bad\.json: boundary '{bid}' is missing key 'status_before'"):
        build_gebc(sample_cfg, "val", training=True)
    raw[vid][0]["status_before"] = "x"
    raw[vid][0]["timestamp"] = "soon"
    bad.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=rf"'{bid}' key 'timestamp'"):
        build_gebc(sample_cfg, "val", training=True)
    with pytest.raises(DataError, match="no entry for split 'train'"):
        build_gebc(sample_cfg, "train", training=True)


def test_relative_paths_use_root(tmp_path):
    vi = json.loads((DATA / "video_info.sample.json").read_text())
    _write_feats(tmp_path / "feats", vi.keys())
    c = OmegaConf.structured(DatasetConfig)
    c.root = str(DATA)
    c.annotations = {"test": "test_timestamp.sample.json"}
    c.video_info = "video_info.sample.json"
    c.features_dir = str(tmp_path / "feats")
    assert len(build_gebc(c, "test", training=False)) == 180


def test_reference_points_float64():
    r = reference_points(2.5, 0, 5, 10.0)
    assert r.dtype == torch.float64 and r.tolist() == [0.25, 0.5]


def test_full_val_and_test_files(tmp_path):
    if not (FULL / "valset_highest_f1.json").is_file():
        pytest.skip(f"full Kinetics-GEBC annotations not present under {FULL}")
    vi = json.loads((FULL / "video_info.json").read_text())
    val = json.loads((FULL / "valset_highest_f1.json").read_text())
    test = json.loads((FULL / "test_timestamp.json").read_text())
    feats = tmp_path / "feats"
    feats.mkdir()
    arr = np.zeros((T, Q, H), np.float16)
    for v in set(val) | set(test):
        if v in vi:
            np.save(feats / f"{v}.npy", arr)
    c = _cfg(tmp_path, {"val": FULL / "valset_highest_f1.json", "test": FULL / "test_timestamp.json"},
             FULL / "video_info.json")
    ds = build_gebc(c, "val", training=False, expected_hidden=H)
    assert len(ds.boundaries) == 6751
    assert len(ds) == 3 * 6748
    missing = [b["boundary_id"] for b in ds.boundaries if not b["available"]]
    assert len(missing) == 3 and all(m.startswith("oc2bib7RLLo") for m in missing)
    assert ds[len(ds) - 1]["q_tokens"].shape == (T, Q, H)
    ts = build_gebc(c, "test", training=False)
    assert len(ts.boundaries) == 6619 and len(ts) == 3 * 6619
    assert ts[0]["caption"] is None and all(b["references"] is None for b in ts.boundaries)
