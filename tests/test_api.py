"""Python API: ``llmva_gebc.load(...).caption(...)`` equals the evaluator's predictions for the same boundary."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llmva_gebc.api import CaptionError, Captioner, load, resolve_boundaries
from llmva_gebc.data.gebc import TYPES, reference_points
from llmva_gebc.data.video import VideoDecodeError

REPO = Path(__file__).resolve().parents[1]


def gebc_options(root: Path):
    a = root / "annotations"
    return [f"datasets.gebc.annotations.train={a / 'train.json'}", f"datasets.gebc.annotations.val={a / 'val.json'}",
            f"datasets.gebc.annotations.test={a / 'test.json'}", f"datasets.gebc.video_info={a / 'video_info.json'}",
            f"datasets.gebc.features_dir={root / 'features'}", f"datasets.gebc.videos_dir={root / 'videos'}",
            f"run.output_dir={root / 'output'}"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, tiny_cfg_factory):
    """6 synthetic clips, features extracted with the tiny config's encoder, a (random) trained checkpoint."""
    from llmva_gebc.data.processors import build_processor
    from llmva_gebc.data.synthetic import generate
    from llmva_gebc.extract import extract_features, list_videos
    from llmva_gebc.models import build_model
    from llmva_gebc.models.checkpoint import save_trainable
    from llmva_gebc.models.encoder import build_encoder

    root = tmp_path_factory.mktemp("syn")
    generate(root, num_videos=6, seed=3)
    cfg = tiny_cfg_factory("opt", *gebc_options(root))
    ds = cfg.datasets.gebc
    rep = extract_features(build_encoder(cfg.model.encoder), list_videos(root / "videos"), root / "features",
                           build_processor(ds.vis_processor), int(ds.vis_processor.num_frames), progress=False)
    assert rep["extracted"] == 6 and not rep["failed"]
    torch.manual_seed(123)  # a "trained" adapter other than the default init
    save_trainable(build_model(cfg.model), root / "ckpt")
    return root, cfg


@pytest.fixture(scope="module")
def captioner(synthetic):
    root, cfg = synthetic
    return load(cfg, ckpt=root / "ckpt")


def val_video(root: Path):
    ann = json.loads((root / "annotations" / "val.json").read_text())
    vid = next(iter(ann))
    return vid, ann[vid], root / "videos" / f"{vid}.mp4"


def evaluator_predictions(cfg, ckpt):
    """What ``evaluate.py`` generates: a freshly built model + ckpt, the val dataset, generate_predictions."""
    from llmva_gebc.engine.evaluator import build_eval_dataset, generate_predictions
    from llmva_gebc.models import build_model
    from llmva_gebc.models.checkpoint import load_trainable

    torch.manual_seed(int(cfg.run.seed))
    model = build_model(cfg.model)
    load_trainable(model, ckpt)
    ds = build_eval_dataset(cfg, "val")
    return {(p["boundary_id"], p["type"]): p["caption"]
            for p in generate_predictions(model, ds, int(cfg.run.batch_size_eval), progress=False)}


def as_predictions(rows):
    return {(r["boundary_id"], t): r[t] for r in rows for t in TYPES}


def test_captions_equal_evaluator_cached_and_decoded(synthetic, captioner):
    root, cfg = synthetic
    vid, entries, video = val_video(root)
    want = evaluator_predictions(cfg, root / "ckpt")
    assert len(want) == 3 * len(entries)
    assert len(set(want.values())) > 1  # not a constant caption, so the comparison means something

    cached = captioner.caption_annotations(video, root / "annotations" / "val.json")
    assert as_predictions(cached) == want

    # the decode path: the same features as the extraction, hence the same captions
    q, src = captioner.features(video, use_cache=False)
    assert src == "decoded video"
    assert torch.equal(q, torch.from_numpy(np.load(root / "features" / f"{vid}.npy")))  # (T, Q, H)
    decoded = captioner.caption_annotations(video, root / "annotations" / "val.json", use_cache=False)
    assert as_predictions(decoded) == want

    # bare timestamps + labels: prev/next = neighbours (0 and the duration at the ends), as annotated
    times = [e["timestamp"] for e in entries]
    plain = captioner.caption(video, times, labels=[e["label"] for e in entries])
    assert [(r["boundary"], r["label"]) for r in plain] == [(e["timestamp"], e["label"]) for e in entries]
    assert [(r["prev_timestamp"], r["next_timestamp"]) for r in plain] == \
        [(e["prev_timestamp"], e["next_timestamp"]) for e in entries]
    assert [{t: r[t] for t in TYPES} for r in plain] == [{t: r[t] for t in TYPES} for r in cached]


def test_caption_features_matches_caption(synthetic, captioner):
    root, _ = synthetic
    vid, entries, video = val_video(root)
    duration = json.loads((root / "annotations" / "video_info.json").read_text())[vid]
    q = torch.from_numpy(np.load(root / "features" / f"{vid}.npy"))
    t = entries[0]["timestamp"]
    a = captioner.caption_features(q, [t], duration, labels=["Change of Color"], video_id=vid)
    b = captioner.caption(video, [t], labels="change of color")
    assert a == b and a[0]["label"] == "Change of Color" and set(TYPES) <= set(a[0])


def test_missing_video_with_cache_and_known_duration(synthetic, captioner, tmp_path):
    root, _ = synthetic
    vid, entries, video = val_video(root)
    gone = tmp_path / f"{vid}.mp4"  # not on disk, but cached and listed in video_info
    assert captioner.caption(gone, [entries[0]["timestamp"]]) == captioner.caption(video, [entries[0]["timestamp"]])
    with pytest.raises(VideoDecodeError, match="video file not found.*no cached features"):
        captioner.caption(tmp_path / "nothere.mp4", [1.0])


def test_resolve_boundaries_neighbours_order_and_errors():
    recs = resolve_boundaries([6.1, 2.4], 10.0, video_id="clip")
    assert [(r["boundary_id"], r["timestamp"], r["prev_timestamp"], r["next_timestamp"], r["label"]) for r in recs] == [
        ("clip_0", 6.1, 2.4, 10.0, "Change of Action"), ("clip_1", 2.4, 0.0, 6.1, "Change of Action")]
    assert torch.equal(reference_points(6.1, 2.4, 10.0, 10.0), torch.tensor([0.61, 0.76], dtype=torch.float64))
    assert [r["label"] for r in resolve_boundaries([1, 2], 3.0, labels=["multiple", "Change of Color"])] == \
        ["Multiple", "Change of Color"]
    for bad, msg in [([0.0], "outside the clip"), ([10.0], "outside the clip"), ([-1], "outside the clip"),
                     ([float("nan")], "finite number"), (["x"], "must be a number"), ([2.0, 2.0], "duplicate")]:
        with pytest.raises(CaptionError, match=msg):
            resolve_boundaries(bad, 10.0)
    with pytest.raises(CaptionError, match="unknown boundary label 'Change of Mood'"):
        resolve_boundaries([1.0], 10.0, labels=["Change of Mood"])
    with pytest.raises(CaptionError, match="3 labels for 2 boundaries"):
        resolve_boundaries([1.0, 2.0], 10.0, labels=["Multiple"] * 3)


def test_import_is_light():
    code = ("import sys, llmva_gebc; assert callable(llmva_gebc.load); "
            "assert 'llmva_gebc.api' not in sys.modules and 'peft' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert isinstance(Captioner, type)
