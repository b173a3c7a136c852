"""Other features: the frame encoders, rate-sampled extraction, the dataset round trip, the checker."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llmva_gebc.data.synthetic import generate
from llmva_gebc.data.video import read_frames
from llmva_gebc.models.frame_encoders import FRAME_ENCODERS, build_frame_encoder
from llmva_gebc.other_feats import check_other_features, main, num_steps, split_video_ids, to_unit


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    generate(d, 6, seed=3)
    return d


@pytest.fixture(scope="module")
def effnet():
    pytest.importorskip("efficientnet_lite_pytorch")
    return build_frame_encoder("efficientnet_lite0", image_size=64)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)
    d = tmp_path_factory.mktemp("clip")
    CLIPVisionModelWithProjection(cfg).eval().save_pretrained(d)
    return d


def test_registry_names_and_unknown():
    assert {"efficientnet_lite0", "clip_vit"} <= set(FRAME_ENCODERS.names())
    with pytest.raises(KeyError, match="registered frame encoders: clip_vit"):
        build_frame_encoder("resnet_nope")


def test_efficientnet_lite0_shapes_frozen_and_pretrained(effnet):
    x = torch.rand(3, 3, 48, 80)
    y = effnet(x)
    assert y.shape == (3, 1280) == (3, effnet.dim) and torch.isfinite(y).all()
    assert not any(p.requires_grad for p in effnet.parameters()) and not effnet.train().training
    g2 = build_frame_encoder("efficientnet_lite0", grid=2, image_size=64)
    y2 = g2(x)
    assert y2.shape == (3, 4 * 1280) == (3, g2.dim)
    # the 2x2 grid averages back to the pooled vector (64 px -> a 2x2 head map: each cell one position)
    assert torch.allclose(y2.view(3, 4, 1280).mean(1), y, atol=1e-5)
    # real ImageNet weights, not a random init: the BN statistics are the trained ones
    bn = effnet.net._bn1
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert effnet.classify(x).shape == (3, 1000)


def test_clip_vit_matches_the_model(tiny_clip):
    from transformers import CLIPVisionModelWithProjection

    from llmva_gebc.data.processors import CLIP_MEAN, CLIP_STD

    enc = build_frame_encoder("clip_vit", path=str(tiny_clip))
    x = torch.rand(2, 3, 32, 32)
    y = enc(x)
    assert y.shape == (2, 16) and enc.dim == 16 and enc.image_size == 32
    ref = CLIPVisionModelWithProjection.from_pretrained(tiny_clip).eval()
    norm = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(y, ref(pixel_values=norm).image_embeds, atol=1e-5)
    assert enc(torch.rand(1, 3, 64, 48)).shape == (1, 16)  # any frame size is resized
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_frame_encoder("clip_vit", path=str(tiny_clip / "nope"))


def test_num_steps():
    assert num_steps(40, 8.0, 2.0) == 10 and num_steps(3, 30.0, 2.0) == 1 and num_steps(10, 8.0, 100.0) == 10
    with pytest.raises(ValueError):
        num_steps(10, 8.0, 0)


def _dataset(data, feat_dir, dim, max_seq_len=16):
    from llmva_gebc.data.gebc import build_gebc

    qdir = Path(feat_dir).parent / "q"
    if not qdir.is_dir():  # main-branch tokens: any (T, Q, H) will do
        qdir.mkdir()
        for p in (data / "videos").glob("*.mp4"):
            np.save(qdir / f"{p.stem}.npy", np.zeros((2, 1, 4), np.float32))
    c = {"root": str(data), "annotations": {"train": "annotations/train.json"},
         "video_info": "annotations/video_info.json", "features_dir": str(qdir), "max_seq_len": max_seq_len,
         "other_feats": [{"name": "effnet", "dir": str(feat_dir), "dim": dim}]}
    return build_gebc(c, "train", training=True)


def test_cli_extract_resume_and_dataset_round_trip(data, effnet, tmp_path, capsys):
    out = tmp_path / "feats" / "effnet"
    args = ["extract", "--encoder", "efficientnet_lite0", "--videos", str(data / "videos"), "--out", str(out),
            "--fps", "2", "--image-size", "64", "--no-progress", "--batch-size", "7"]
    assert main(args) == 0
    assert "6 extracted" in capsys.readouterr().out
    info = json.loads((data / "annotations/video_info.json").read_text())
    for vid, dur in info.items():
        arr = np.load(out / f"{vid}.npy")
        assert arr.shape == (round(dur * 8 * 2 / 8), 1280)  # the clips are 8 fps: 2 of every 8 frames
        assert arr.dtype == np.float32 and np.isfinite(arr).all()
    # each row is the encoder's vector of the frame it names
    vid = sorted(info)[0]
    frames = read_frames(data / "videos" / f"{vid}.mp4", len(np.load(out / f"{vid}.npy")))
    with torch.no_grad():
        want = effnet(to_unit(frames)).numpy()
    assert np.allclose(np.load(out / f"{vid}.npy"), want, atol=1e-4)
    # resumable: an existing file is kept, a missing one redone
    mtime = (out / f"{vid}.npy").stat().st_mtime_ns
    (out / f"{sorted(info)[1]}.npy").unlink()
    assert main(args) == 0
    assert "1 extracted, 5 skipped" in capsys.readouterr().out
    assert (out / f"{vid}.npy").stat().st_mtime_ns == mtime and not list(out.glob(".*tmp*"))
    # the folder round-trips through the dataset: (max_seq_len, d) by the reference's nearest resampling
    from llmva_gebc.data.gebc import resample_nearest

    ds = _dataset(data, out, 1280)
    s = ds[0]
    arr = np.load(out / f"{s['video_id']}.npy")
    assert s["other_feats"].shape == (16, 1280)
    assert np.array_equal(s["other_feats"].numpy(), resample_nearest(arr, 16))
    # and passes the checker
    assert main(["check", "--dir", str(out), "--dim", "1280", "--annotations", str(data / "annotations/train.json"),
                 "--video-info", str(data / "annotations/video_info.json")]) == 0


def test_check_names_missing_video_and_wrong_shape(data, tmp_path, capsys):
    ann = data / "annotations" / "val.json"
    ids = split_video_ids(data / "annotations" / "train.json")
    assert len(ids) >= 3
    d = tmp_path / "internvideo"
    d.mkdir()
    np.save(d / f"{ids[0]}.npy", np.ones((5, 8), np.float32))
    np.save(d / f"{ids[1]}.npy", np.ones((5, 7), np.float32))  # wrong dim
    problems = check_other_features(d, 8, ids, "internvideo")
    assert any(f"wrong shape in {d / ids[1]}.npy: (5, 7), expected (t, 8)" in p for p in problems)
    assert not any(ids[0] in p for p in problems)
    missing = [p for p in problems if "missing video" in p]
    assert len(missing) == len(ids) - 2 and all(any(f"'{v}'" in p for p in missing) for v in ids[2:])
    np.save(d / f"{ids[0]}.npy", np.full((5, 8), np.nan, np.float32))
    assert any("non-finite" in p and ids[0] in p for p in check_other_features(d, 8, ids[:1]))
    np.save(d / f"{ids[0]}.npy", np.ones((8,), np.float32))  # 1-D
    assert "wrong shape" in check_other_features(d, 8, ids[:1])[0]
    # CLI: exit status 2, each problem on its own line naming the file
    rc = main(["check", "--dir", str(d), "--dim", "8", "--annotations", str(data / "annotations/train.json")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{ids[1]}.npy" in err and "missing video" in err
    assert main(["check", "--dir", str(tmp_path / "nope"), "--dim", "8", "--annotations", str(ann)]) == 2
    assert "features dir not found" in capsys.readouterr().err


def test_check_from_config(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LLMVA_DATA", str(data))
    cfg = tmp_path / "c.yaml"
    d = tmp_path / "clip"
    d.mkdir()
    for v in split_video_ids(data / "annotations" / "val.json"):
        np.save(d / f"{v}.npy", np.zeros((3, 4), np.float32))
    root = Path(__file__).resolve().parents[1] / "train_configs" / "tiny.yaml"
    cfg.write_text(f"base: {root}\ndatasets:\n  gebc:\n    other_feats: [{{name: clip, dir: {d}, dim: 4}}]\n")
    assert main(["check", "--cfg-path", str(cfg), "--split", "val"]) == 0
    assert "datasets.gebc.other_feats.clip" in capsys.readouterr().out
    assert main(["check", "--cfg-path", str(cfg), "--split", "train"]) == 2


def _write_clip(path: Path, n: int, h: int, w: int, fps: int = 8) -> Path:
    import av

    rng = np.random.default_rng(h * w)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"preset": "veryfast", "threads": "1", "bf": "0"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for _ in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_extract_videos_of_different_sizes_in_one_batch(effnet, tmp_path, capsys):
    """Real clips differ in size: frames are resized to the encoder's input before they share a batch."""
    vids = tmp_path / "videos"
    vids.mkdir()
    _write_clip(vids / "small.mp4", 8, 48, 64)
    _write_clip(vids / "large.mp4", 8, 80, 96)
    out = tmp_path / "feats"
    args = ["extract", "--encoder", "efficientnet_lite0", "--videos", str(vids), "--out", str(out),
            "--fps", "4", "--image-size", "64", "--no-progress", "--batch-size", "64"]
    assert main(args) == 0
    assert "2 extracted, 0 skipped, 0 failed" in capsys.readouterr().out
    for vid in ("small", "large"):
        arr = np.load(out / f"{vid}.npy")
        frames = read_frames(vids / f"{vid}.mp4", len(arr))
        with torch.no_grad():
            want = effnet(to_unit(frames)).numpy()  # each video alone, resized by the encoder
        assert arr.shape == (4, 1280) and np.allclose(arr, want, atol=1e-5)
