"""WebVid / CC3M / VideoChat-instruct builders on tiny fixtures made here."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from llmva_gebc.config import DatasetConfig
from llmva_gebc.data.collate import collate_gebc
from llmva_gebc.data.gebc import DataError
from llmva_gebc.data.pretrain import DEFAULT_CAPTION_PROMPT
from llmva_gebc.data.synthetic import encode_mp4
from llmva_gebc.registry import DATASETS


def _mp4(path, level=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_mp4(np.full((10, 32, 48, 3), level, np.uint8), path, fps=5)


def _cfg(root, **kw):
    c = OmegaConf.structured(DatasetConfig)
    c.root = str(root)
    c.vis_processor.num_frames = 3
    c.vis_processor.image_size = 32
    for k, v in kw.items():
        OmegaConf.update(c, k, v, merge=False)
    return c


def _check(s, t):
    assert s["frames"].shape == (t, 3, 32, 32) and s["frames"].dtype == torch.float32
    assert s["ref_points"].tolist() == [0.5, 1.0] and s["ref_points"].dtype == torch.float64
    assert s["type"] == "caption" and s["boundary_id"] == s["video_id"]


def test_webvid_tsv(tmp_path):
    (tmp_path / "filter_annotation").mkdir()
    (tmp_path / "filter_annotation" / "0.tsv").write_text(
        "videoid\tname\tpage_dir\n1001\tA dog runs on grass. \t000001_000050\n1002\tMissing clip\t000001_000050\n"
    )
    _mp4(tmp_path / "videos" / "000001_000050" / "1001.mp4")
    ds = DATASETS.build("webvid", _cfg(tmp_path, annotations={"train": "filter_annotation"}), "train", training=True)
    assert len(ds) == 1  # the row without a video is dropped
    s = ds[0]
    _check(s, 3)
    assert s["caption"] == "A dog runs on grass." and s["prompt"] == DEFAULT_CAPTION_PROMPT and s["video_id"] == "1001"
    bad = tmp_path / "bad.tsv"
    bad.write_text("videoid\tcaption\n1\tx\n")
    with pytest.raises(DataError, match=r"bad\.tsv: missing column 'name'"):
        DATASETS.build("webvid", _cfg(tmp_path, annotations={"train": "bad.tsv"}), "train", training=True)


def test_webvid_shards(tmp_path):
    for s in range(2):
        with tarfile.open(tmp_path / f"shard-{s:03d}.tar", "w") as tf:
            for k in range(2):
                key = f"s{s}k{k}"
                _mp4(tmp_path / "tmp.mp4", level=40 * (2 * s + k + 1))
                tf.add(tmp_path / "tmp.mp4", arcname=f"{key}.mp4")
                txt = f"clip {key}".encode()
                info = tarfile.TarInfo(f"{key}.txt")
                info.size = len(txt)
                tf.addfile(info, io.BytesIO(txt))
    ds = DATASETS.build("webvid", _cfg(tmp_path, shards="shard-{000..001}.tar", prompt="What happens?"), "train",
                        training=True)
    assert len(ds) == 4
    s = ds[3]
    _check(s, 3)
    assert s["caption"] == "clip s1k1" and s["prompt"] == "What happens?"
    assert ds[0]["frames"].mean() < ds[3]["frames"].mean()  # the right member's pixels
    assert collate_gebc([ds[0], ds[1]])["frames"].shape == (2, 3, 3, 32, 32)


def test_cc3m(tmp_path):
    (tmp_path / "image").mkdir()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "image" / "GCC_1.jpg")
    (tmp_path / "filter_cap.json").write_text(json.dumps(
        [{"image_id": "GCC_1", "caption": "a white wall"}, {"image_id": "GCC_2", "caption": "gone"}]))
    ds = DATASETS.build("cc3m", _cfg(tmp_path, annotations={"train": "filter_cap.json"}), "train", training=True)
    assert len(ds) == 1
    s = ds[0]
    _check(s, 3)  # the image repeated to vis_processor.num_frames
    assert torch.equal(s["frames"][0], s["frames"][2])
    assert s["caption"] == "a white wall"
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": "GCC_1"}]))
    with pytest.raises(DataError, match=r"bad\.json: entry 0 is missing key 'caption'"):
        DATASETS.build("cc3m", _cfg(tmp_path, annotations={"train": "bad.json"}), "train", training=True)


def test_videochat_instruct(tmp_path):
    _mp4(tmp_path / "vids" / "a.mp4")
    _mp4(tmp_path / "vids" / "b.mp4")
    (tmp_path / "instruct.json").write_text(json.dumps([
        {"video": "a.mp4", "QA": [{"q": "What colour is it?", "a": "Grey."}, {"q": "Does it move?", "a": "No."}]},
        {"video": "b.mp4", "caption": "A flat grey screen."},
    ]))
    c = _cfg(tmp_path, annotations={"train": "instruct.json"}, videos_dir="vids")
    ds = DATASETS.build("videochat_instruct", c, "train", training=True)
    assert len(ds) == 3
    got = [(ds[i]["boundary_id"], ds[i]["prompt"], ds[i]["caption"]) for i in range(3)]
    assert got == [("a_0", "What colour is it?", "Grey."), ("a_1", "Does it move?", "No."),
                   ("b", DEFAULT_CAPTION_PROMPT, "A flat grey screen.")]
    _check(ds[2], 3)
    (tmp_path / "bad.json").write_text(json.dumps([{"video": "a.mp4", "QA": [{"q": "?"}]}]))
    with pytest.raises(DataError, match=r"bad\.json: entry 0 \('a\.mp4'\) QA\[0\] is missing key 'a'"):
        DATASETS.build("videochat_instruct", _cfg(tmp_path, annotations={"train": "bad.json"}), "train", training=True)
