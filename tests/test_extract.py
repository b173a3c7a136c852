"""Feature extraction: end to end with the tiny encoder, resume, interruption, failures report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llmva_gebc.data.processors import build_processor
from llmva_gebc.data.synthetic import generate
from llmva_gebc.extract import REPORT_NAME, extract_features, list_videos, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "train_configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    generate(d, 4, seed=2)
    (d / "videos" / "corruptvid0.mp4").write_bytes(b"garbage" * 50)
    return d


class MeanEncoder(torch.nn.Module):
    """(N, 3, S, S) -> (N, 2, 3): per-frame channel means, so outputs can be traced back to frames."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    device = property(lambda self: self.p.device)
    dtype = property(lambda self: self.p.dtype)

    def forward(self, x):
        self.calls.append(len(x))
        return x.mean((2, 3))[:, None, :].expand(-1, 2, -1)


def test_batching_across_videos_keeps_order(videos, tmp_path):
    paths = [p for p in list_videos(videos / "videos") if "corrupt" not in p.name]
    enc = MeanEncoder()
    proc = build_processor(None)
    rep = extract_features(enc, paths, tmp_path, proc, num_frames=3, batch_size=4, progress=False)
    assert rep["extracted"] == len(paths) == 4 and rep["failed"] == [] and rep["frames"] == 12
    assert max(enc.calls) <= 4
    from llmva_gebc.data.video import read_frames

    for p in paths:
        want = proc(read_frames(p, 3)).mean((2, 3))  # (3, 3)
        got = np.load(tmp_path / f"{p.stem}.npy")
        assert got.shape == (3, 2, 3) and np.allclose(got[:, 0], want.numpy(), atol=1e-5)
    assert not list(tmp_path.glob(".*tmp*"))


def test_cli_end_to_end_resume_and_report(videos, tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "feats"
    args = ["--cfg-path", str(TINY), "--videos", str(videos / "videos"), "--out", str(out), "--no-progress",
            "--batch-size", "6"]
    assert main(args) == 1  # the corrupt file fails, the rest is done
    rep = json.loads((out / REPORT_NAME).read_text())
    assert rep["extracted"] == 4 and len(rep["failed"]) == 1
    assert rep["failed"][0]["video"].endswith("corruptvid0.mp4") and "cannot decode" in rep["failed"][0]["error"]
    assert "1 failed" in capsys.readouterr().out
    ids = json.loads((videos / "annotations/video_info.json").read_text())
    for v in ids:
        a = np.load(out / f"{v}.npy")
        assert a.shape == (4, 4, 32) and a.dtype == np.float32 and np.isfinite(a).all()  # tiny: T=4, Q=4, H=32
    # resume: nothing redone
    first = sorted(ids)[0]
    mtimes = {v: (out / f"{v}.npy").stat().st_mtime_ns for v in ids}
    (out / f"{first}.npy").unlink()
    (videos / "videos" / "corruptvid0.mp4").rename(tmp_path / "moved.mp4")
    try:
        assert main(args) == 0
    finally:
        (tmp_path / "moved.mp4").rename(videos / "videos" / "corruptvid0.mp4")
    rep = json.loads((out / REPORT_NAME).read_text())
    assert rep["extracted"] == 1 and rep["skipped"] == 3 and rep["failed"] == []
    assert all((out / f"{v}.npy").stat().st_mtime_ns == mtimes[v] for v in ids if v != first)
    # the features are consumed by the gebc builder unchanged
    from omegaconf import OmegaConf

    from llmva_gebc.config import DatasetConfig
    from llmva_gebc.data.gebc import build_gebc

    c = OmegaConf.structured(DatasetConfig)
    c.root = str(videos)
    c.annotations = {"train": "annotations/train.json"}
    c.video_info = "annotations/video_info.json"
    c.features_dir = str(out)
    ds = build_gebc(c, "train", training=True, expected_hidden=32, expected_queries=4)
    assert ds[0]["q_tokens"].shape == (4, 4, 32)


def test_interrupted_run_keeps_finished_videos(videos, tmp_path):
    paths = [p for p in list_videos(videos / "videos") if "corrupt" not in p.name]
    proc = build_processor(None)
    seen = []

    def flaky(frames):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return proc(frames)

    with pytest.raises(KeyboardInterrupt):
        extract_features(MeanEncoder(), paths, tmp_path, flaky, num_frames=2, batch_size=2, progress=False)
    done = sorted(p.stem for p in tmp_path.glob("*.npy"))
    assert done == sorted(p.stem for p in paths[:2])
    assert not list(tmp_path.glob(".*tmp*"))
    assert json.loads((tmp_path / REPORT_NAME).read_text())["extracted"] == 2
    enc = MeanEncoder()
    rep = extract_features(enc, paths, tmp_path, proc, num_frames=2, batch_size=2, progress=False)
    assert rep["skipped"] == 2 and rep["extracted"] == 2 and sum(enc.calls) == 4


def test_list_file(videos, tmp_path):
    ids = sorted(json.loads((videos / "annotations/video_info.json").read_text()))
    lst = tmp_path / "list.txt"
    lst.write_text(f"# two videos\n{ids[0]}\n{ids[1]}.mp4\nnot_a_video\n")
    got = list_videos(videos / "videos", lst)
    assert [p.name for p in got] == [f"{ids[0]}.mp4", f"{ids[1]}.mp4", "not_a_video.mp4"]
    rep = extract_features(MeanEncoder(), got, tmp_path / "o", build_processor(None), 2, progress=False)
    assert rep["extracted"] == 2 and "not found" in rep["failed"][0]["error"]


def test_decoding_in_dataloader_workers_gives_the_same_outputs(videos, tmp_path):
    """--num-workers: videos decoded in worker processes while the encoder runs; same files, same order,
    same failures as decoding in the main process."""
    paths = list_videos(videos / "videos")  # four clips and the corrupt file
    proc = build_processor(None)
    reps, encs = {}, {}
    for w in (0, 2):
        encs[w] = MeanEncoder()
        reps[w] = extract_features(encs[w], paths, tmp_path / f"w{w}", proc, num_frames=3, batch_size=4,
                                   progress=False, write_report=False, num_workers=w)
    assert reps[2]["extracted"] == reps[0]["extracted"] == 4 and reps[2]["frames"] == 12
    assert [f["video"] for f in reps[2]["failed"]] == [f["video"] for f in reps[0]["failed"]]
    assert len(reps[2]["failed"]) == 1 and "corrupt" in reps[2]["failed"][0]["video"]
    assert encs[2].calls == encs[0].calls  # the same batches reach the encoder
    for p in paths:
        if "corrupt" not in p.name:
            assert np.array_equal(np.load(tmp_path / "w2" / f"{p.stem}.npy"), np.load(tmp_path / "w0" / f"{p.stem}.npy"))


def test_cli_rejects_bad_worker_count(videos, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["--cfg-path", str(TINY), "--videos", str(videos / "videos"), "--out", str(tmp_path / "o"),
              "--num-workers", "-1", "--precision", "fp32"])
    assert e.value.code == 2
