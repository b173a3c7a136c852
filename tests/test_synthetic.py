"""Synthetic GEBC generator: layout, determinism, consumed unchanged by the gebc builder."""
from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from llmva_gebc.config import DatasetConfig
from llmva_gebc.data.gebc import LABELS, TYPES, build_gebc
from llmva_gebc.data.synthetic import generate, main, make_clip
from llmva_gebc.data.video import read_frames


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    assert main(["--out", str(out), "--num-videos", "12", "--seed", "3"]) == 0
    return out


def test_layout_and_annotations(syn):
    vids = sorted(p.stem for p in (syn / "videos").glob("*.mp4"))
    assert len(vids) == 12 and all(len(v) == 11 for v in vids)
    info = json.loads((syn / "annotations/video_info.json").read_text())
    assert sorted(info) == vids and all(3.0 <= d <= 6.0 for d in info.values())
    splits = {s: json.loads((syn / f"annotations/{s}.json").read_text()) for s in ("train", "val", "test")}
    assert sorted(v for s in splits.values() for v in s) == vids
    for s, ann in splits.items():
        assert ann, s
        for v, bs in ann.items():
            assert 1 <= len(bs) <= 3
            for k, b in enumerate(bs):
                assert b["boundary_id"] == f"{v}_{k}" and b["label"] in LABELS
                assert b["prev_timestamp"] < b["timestamp"] < b["next_timestamp"] <= info[v]
                assert ("subject" in b) == (s != "test")
    gt = json.loads((syn / "annotations/test_gt.json").read_text())
    assert set(gt) == set(splits["test"]) and all(t in b for bs in gt.values() for b in bs for t in TYPES)


def test_deterministic(tmp_path):
    a, b = make_clip(5, 1, 64, 8), make_clip(5, 1, 64, 8)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(make_clip(6, 1, 64, 8)[0][:1], a[0][:1]) or make_clip(6, 1, 64, 8)[1] != a[1]
    generate(tmp_path / "x", 6, seed=1)
    generate(tmp_path / "y", 6, seed=1)
    for f in ("train", "val", "test", "video_info"):
        assert (tmp_path / "x/annotations" / f"{f}.json").read_text() == (tmp_path / "y/annotations" / f"{f}.json").read_text()
    vids = sorted(p.name for p in (tmp_path / "x/videos").glob("*.mp4"))
    assert len(vids) == 6  # byte-identical clips, in one process and across processes
    assert all((tmp_path / "x/videos" / v).read_bytes() == (tmp_path / "y/videos" / v).read_bytes() for v in vids)
    generate(tmp_path / "z", 6, seed=1, workers=2)
    assert all((tmp_path / "x/videos" / v).read_bytes() == (tmp_path / "z/videos" / v).read_bytes() for v in vids)


def test_captions_match_pixels():
    """Colour-change boundaries: the subject's colour before/after is what is drawn."""
    from llmva_gebc.data.synthetic import COLORS

    checked = 0
    for i in range(40):
        frames, bnds, _ = make_clip(0, i, 64, 8)
        for f, label, subj, before, after in bnds:
            if label != "Change of Color":
                continue
            for idx, name in ((f - 1, before), (f, after)):
                px = frames[idx].reshape(-1, 3)
                assert (np.abs(px.astype(int) - COLORS[name]).sum(1) == 0).any(), (i, idx, name)
            checked += 1
    assert checked > 0


def test_decoded_frames_and_gebc_builder(syn, tmp_path):
    info = json.loads((syn / "annotations/video_info.json").read_text())
    v = sorted(info)[0]
    fr = read_frames(syn / "videos" / f"{v}.mp4", 12)
    assert fr.shape == (12, 64, 64, 3) and fr.dtype == np.uint8
    clip_frames = int(round(info[v] * 8))
    # the decoded video has the annotated duration's frame count
    assert len(read_frames(syn / "videos" / f"{v}.mp4", clip_frames)) == clip_frames
    feats = tmp_path / "feats"
    feats.mkdir()
    for vid in info:
        np.save(feats / f"{vid}.npy", np.zeros((3, 4, 8), np.float32))
    c = OmegaConf.structured(DatasetConfig)
    c.root = str(syn)
    c.annotations = {s: f"annotations/{s}.json" for s in ("train", "val", "test")}
    c.video_info = "annotations/video_info.json"
    c.features_dir = str(feats)
    for split in ("train", "val", "test"):
        ds = build_gebc(c, split, training=split == "train", expected_hidden=8)
        assert len(ds) == 3 * len(ds.boundaries) > 0 and all(b["available"] for b in ds.boundaries)
        assert (ds[0]["caption"] is None) == (split == "test")
    c.use_raw_video = True
    c.videos_dir = "videos"
    c.vis_processor.num_frames = 4
    s = build_gebc(c, "val", training=False)[0]
    assert s["frames"].shape == (4, 3, 224, 224) and "q_tokens" not in s
