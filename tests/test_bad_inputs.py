"""Bad inputs (issue 12): videos whose headers lie, poisoned features, impossible timestamps, malformed
ids, broken scoring inputs and pickles that would run code. One test (or more) per numbered case.

Test media are made here with PyAV: tiny (32x24) noise frames, libx264 without B-frames, so the
frames that survive a cut are exactly the packets whose bytes lie before it.
"""
from __future__ import annotations

import ast
import io
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llmva_gebc.data.video import TruncatedVideoError, VideoDecodeError, probe_video, read_frames

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "train_configs" / "tiny.yaml"
SAMPLE_VAL = REPO / "tests" / "data" / "valset_highest_f1.sample.json"
W, H = 32, 24


# ------------------------------------------------------------------------------------------ media
class _NoSeek(io.RawIOBase):
    """A write-only stream that cannot seek back, as a browser's MediaRecorder: no duration in the header."""

    def __init__(self, f):
        self.f = f

    def writable(self):
        return True

    def write(self, b):
        return self.f.write(b)


def write_video(path: Path, n: int, fps: int, *, codec: str = "libx264", fmt: str | None = None,
                container_options: dict | None = None, seekable: bool = True, title: str | None = None) -> Path:
    import av

    rng = np.random.default_rng(n)
    opts = {"preset": "veryfast", "threads": "1", "bf": "0"} if codec == "libx264" else {}
    with open(path, "wb") as raw:
        with av.open(raw if seekable else _NoSeek(raw), "w", format=fmt or path.suffix[1:].replace("mkv", "matroska"),
                     options=container_options or {}) as c:
            if title:
                c.metadata["title"] = title
            s = c.add_stream(codec, rate=fps, options=opts)
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            for _ in range(n):
                frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), format="rgb24")
                for p in s.encode(frame):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    return path


def cut(src: Path, dst: Path, fraction: float) -> int:
    """Keep the first ``fraction`` of ``src``'s bytes in ``dst``; returns the frames that survive intact
    (leading packets whose bytes all lie before the cut: the decodable ones without B-frames)."""
    import av

    data = src.read_bytes()
    end = int(len(data) * fraction)
    dst.write_bytes(data[:end])
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    intact = 0
    for pos, size in packets:
        if pos + size > end:
            break
        intact += 1
    return intact


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    fs = write_video(d / "faststart_full.mp4", 48, 12, container_options={"movflags": "faststart"})
    six = write_video(d / "six_full.mp4", 60, 10, container_options={"movflags": "faststart"})
    return {
        "dir": d,
        "fs70": (d / "fs70.mp4", cut(fs, d / "fs70.mp4", 0.7)),
        "six_half": (d / "six_half.mp4", cut(six, d / "six_half.mp4", 0.5)),
        "webm": write_video(d / "rec.webm", 30, 10, codec="libvpx", seekable=False),
        "mkv": write_video(d / "cam.mkv", 30, 10, seekable=False),
    }


@pytest.fixture(scope="module")
def captioner(tiny_llm_dirs, tmp_path_factory):
    import llmva_gebc

    d = tmp_path_factory.mktemp("cap")
    (d / "feats").mkdir()
    (d / "video_info.json").write_text("{}")
    opts = [f"model.llm.path={tiny_llm_dirs['opt']}", f"datasets.gebc.video_info={d / 'video_info.json'}",
            f"datasets.gebc.features_dir={d / 'feats'}"]
    return llmva_gebc.load(TINY, options=opts), ["--cfg-path", str(TINY), "--options", *opts], d / "feats"


def run_caption_cli(args, capsys):
    from llmva_gebc.caption import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------ 1. truncated files
def test_truncated_faststart_mp4_counts_what_decodes(media, tmp_path):
    path, intact = media["fs70"]
    assert 0 < intact < 48
    info = probe_video(path)
    assert (info.frames, info.declared_frames) == (intact, 48)
    assert info.duration == pytest.approx(intact / 12)
    assert f"{intact} frames" in info.shortfall() and "declares 48 frames" in info.shortfall()
    for backend in (None, "pyav"):  # decord refuses the file on open; PyAV then counts the frames
        with pytest.raises(TruncatedVideoError, match=rf"fs70\.mp4 is truncated .*: {intact} frames .* declares 48 frames"):
            read_frames(path, 4, backend=backend)
    # extraction: a failure in the report naming the file and both counts, exit status 1
    from llmva_gebc.data.processors import build_processor
    from llmva_gebc.extract import REPORT_NAME, extract_features

    enc = _MeanEncoder()
    rep = extract_features(enc, [path, media["dir"] / "faststart_full.mp4"], tmp_path, build_processor(None), 4,
                           progress=False)
    assert rep["extracted"] == 1 and len(rep["failed"]) == 1
    failed = json.loads((tmp_path / REPORT_NAME).read_text())["failed"][0]
    assert failed["video"].endswith("fs70.mp4") and f"{intact} frames" in failed["error"] and "48 frames" in failed["error"]
    assert not (tmp_path / "fs70.npy").exists()


@pytest.mark.parametrize("ext,codec", [(".webm", "libvpx"), (".mkv", "libx264")])
def test_truncated_matroska_with_a_file_duration(tmp_path, ext, codec):
    """Matroska states a duration for the file only (no per-stream one); a one-stream file cut in half is caught."""
    full = write_video(tmp_path / f"full{ext}", 30, 10, codec=codec)
    half = tmp_path / f"half{ext}"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert probe_video(full).shortfall() is None
    info = probe_video(half)
    assert info.declared_frames is None and info.declared_duration == pytest.approx(3.0) and 0 < info.frames < 25
    for backend in ("decord", "pyav"):  # decord opens it (unlike a truncated MP4): both compare with the header
        with pytest.raises(TruncatedVideoError, match=rf"{info.frames} frames \({info.frames / 10:.2f} s\) decode "
                                                      r"but its header declares 3\.00 s"):
            read_frames(half, 4, backend=backend)
    assert read_frames(full, 4, backend="decord").shape == (4, H, W, 3)


def test_stream_copied_cut_with_edit_list_is_not_truncated(media, tmp_path):
    """An MP4 cut by stream copy keeps 2.5 s of pre-roll frames in its sample table (60 frames) that its
    edit list hides: 35 frames decode, the declared duration (3.5 s) agrees, so it is no truncation."""
    import av

    path = tmp_path / "copy_cut.mp4"
    with av.open(str(media["dir"] / "six_full.mp4")) as src, av.open(str(path), "w") as dst:
        s = src.streams.video[0]
        o = dst.add_stream_from_template(s)
        shift = int(2.5 / s.time_base)
        for p in src.demux(s):
            if p.dts is None:
                continue
            p.pts, p.dts, p.stream = p.pts - shift, p.dts - shift, o
            dst.mux(p)
    info = probe_video(path)
    assert (info.frames, info.declared_frames, info.shortfall()) == (35, 60, None)
    assert info.duration == pytest.approx(3.5) and info.declared_duration == pytest.approx(3.5)
    assert read_frames(path, 4, backend="pyav").shape == (4, H, W, 3)


def test_half_cut_clip_boundary_past_last_decodable_frame(media, captioner, capsys):
    path, intact = media["six_half"]
    info = probe_video(path)
    assert info.frames == intact and info.duration == pytest.approx(intact / 10) and info.declared_duration == 6.0
    _, cli_args, _ = captioner
    rc, out, err = run_caption_cli([path, "--boundaries", "4.0", *cli_args], capsys)
    assert rc == 2 and out == ""
    assert f"boundary 'six_half_0' at 4 s of {path}" in err
    assert f"{intact} frames, {intact / 10:.2f} s, decode; its header declares 60 frames, 6.00 s" in err
    # a boundary inside the decodable part still fails: the file itself is truncated
    rc, _, err = run_caption_cli([path, "--boundaries", "1.0", *cli_args], capsys)
    assert rc == 2 and f"{intact} frames" in err and "declares 60 frames" in err


# -------------------------------------------------------------------------- 2. no duration in header
@pytest.mark.parametrize("kind", ["webm", "mkv"])
def test_recordings_without_duration(media, kind):
    import av

    path = media[kind]
    with av.open(str(path)) as c:  # what the header states: nothing
        s = c.streams.video[0]
        assert c.duration is None and s.duration is None and s.frames == 0
    info = probe_video(path)
    assert (info.frames, info.duration, info.declared_frames, info.declared_duration) == (30, pytest.approx(3.0), None, None)
    assert read_frames(path, 4).shape == (4, H, W, 3)


def test_caption_cli_measures_webm_duration(media, captioner, capsys):
    _, cli_args, _ = captioner
    rc, out, err = run_caption_cli([media["webm"], "--boundaries", "1.5", "--json", *cli_args], capsys)
    assert rc == 0, err
    row = json.loads(out)[0]
    assert row["duration"] == pytest.approx(3.0) and row["next_timestamp"] == pytest.approx(3.0)


# ------------------------------------------------------------------------------ 3. broken metadata
def test_avi_with_non_utf8_metadata_decodes(tmp_path):
    import av

    path = write_video(tmp_path / "old.avi", 10, 10, codec="mpeg4", fmt="avi", title="TITLEPLACEHOLDER")
    data = path.read_bytes()
    assert data.count(b"TITLEPLACEHOLDER") == 1
    path.write_bytes(data.replace(b"TITLEPLACEHOLDER", b"caf\xe9 \xff\xfe r\xe9sum\xe9 "))  # Latin-1, not UTF-8
    with pytest.raises(UnicodeDecodeError):
        av.open(str(path)).close()  # what PyAV does unless told to ignore metadata errors
    assert read_frames(path, 3, backend="pyav").shape == (3, H, W, 3)
    assert probe_video(path).frames == 10


# -------------------------------------------------------------------------- 4. half-written outputs
class _MeanEncoder(torch.nn.Module):
    """(N, 3, S, S) -> (N, 2, 3) per-frame channel means; tells Q and H as the real encoder does."""

    hidden_size = 3

    def __init__(self):
        super().__init__()
        self.query_tokens = torch.nn.Parameter(torch.zeros(1, 2, 3))
        self.calls = 0

    device = property(lambda self: self.query_tokens.device)
    dtype = property(lambda self: self.query_tokens.dtype)

    def forward(self, x):
        self.calls += len(x)
        return x.mean((2, 3))[:, None, :].expand(-1, 2, -1)


def test_extract_checks_existing_outputs_before_skipping(media, tmp_path):
    from llmva_gebc.data.processors import build_processor
    from llmva_gebc.extract import extract_features

    d = media["dir"]
    paths = [d / "faststart_full.mp4", d / "six_full.mp4", media["webm"], media["mkv"]]
    (tmp_path / "faststart_full.npy").write_bytes(b"")  # 0 bytes, left by a killed tool
    np.save(tmp_path / "six_full.npy", np.zeros((4, 2, 5), np.float32))  # wrong H
    bad = np.zeros((4, 2, 3), np.float32)
    bad[1, 0, 2] = np.nan
    np.save(tmp_path / "rec.npy", bad)  # NaN
    np.save(tmp_path / "cam.npy", np.ones((4, 2, 3), np.float32))  # good: skipped
    enc = _MeanEncoder()
    rep = extract_features(enc, paths, tmp_path, build_processor(None), 4, progress=False)
    assert rep["skipped"] == 1 and rep["extracted"] == 3 and rep["failed"] == [] and enc.calls == 12
    reasons = {r["video"]: r["reason"] for r in rep["redone"]}
    assert sorted(reasons) == ["faststart_full", "rec", "six_full"]
    assert "cannot read features file" in reasons["faststart_full"]
    assert "expected shape (4, 2, 3), got (4, 2, 5)" in reasons["six_full"]
    assert "1 non-finite values" in reasons["rec"]
    for p in paths:
        a = np.load(tmp_path / f"{p.stem}.npy")
        assert a.shape == (4, 2, 3) and np.isfinite(a).all()
    assert np.all(np.load(tmp_path / "cam.npy") == 1)  # the good one was not redone


def test_other_feature_extraction_checks_existing_outputs(media, tmp_path):
    """The same check for a frame encoder's (t, d) outputs, whose t depends on the clip."""
    from llmva_gebc.extract import extract_features

    class DimEncoder(torch.nn.Module):
        dim = 3
        device, dtype = torch.device("cpu"), torch.float32

        def forward(self, x):  # (N, 3, S, S) -> (N, 3)
            return x.mean((2, 3))

    paths = [media["webm"], media["mkv"], media["dir"] / "six_full.mp4"]
    (tmp_path / "rec.npy").write_bytes(b"\x93NUMPY")  # half-written header
    np.save(tmp_path / "cam.npy", np.ones((5, 4), np.float32))  # wrong d
    np.save(tmp_path / "six_full.npy", np.ones((7, 3), np.float32))  # fine, any t: skipped
    rep = extract_features(DimEncoder(), paths, tmp_path, lambda f: torch.from_numpy(f).permute(0, 3, 1, 2).float(),
                           num_frames=0, read=lambda p: read_frames(p, 5), progress=False)
    assert rep["skipped"] == 1 and rep["extracted"] == 2 and rep["failed"] == []
    assert sorted(r["video"] for r in rep["redone"]) == ["cam", "rec"]
    assert "expected shape (t, ..., 3), got (5, 4)" in {r["video"]: r["reason"] for r in rep["redone"]}["cam"]
    assert np.load(tmp_path / "rec.npy").shape == np.load(tmp_path / "cam.npy").shape == (5, 3)


# ------------------------------------------------------------------- 5./6. poisoned features, T limit
def _gebc_cfg(tmp_path: Path, split_files: dict, features_dir: Path, video_info: dict, **kw):
    from omegaconf import OmegaConf

    from llmva_gebc.config import DatasetConfig

    vi = tmp_path / "video_info.json"
    vi.write_text(json.dumps(video_info))
    c = OmegaConf.structured(DatasetConfig)
    c.annotations = {k: str(v) for k, v in split_files.items()}
    c.video_info, c.features_dir = str(vi), str(features_dir)
    for k, v in kw.items():
        OmegaConf.update(c, k, v, merge=False)
    return c


def _ann(tmp_path: Path, name: str, entries: dict, captions: bool = True) -> Path:
    data = {vid: [dict(zip(("boundary_id", "prev_timestamp", "timestamp", "next_timestamp"), e), label="Multiple",
                       **({"subject": "a", "status_before": "b", "status_after": "c"} if captions else {}))
                  for e in items] for vid, items in entries.items()}
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


VID_A, VID_B = "aaaaaaaaaaa", "bbbbbbbbbbb"


@pytest.mark.parametrize("split,training", [("train", True), ("val", False), ("test", False)])
def test_nan_features_are_an_error_naming_the_file(tmp_path, split, training):
    from llmva_gebc.data.gebc import DataError, build_gebc

    feats = tmp_path / "feats"
    feats.mkdir()
    np.save(feats / f"{VID_A}.npy", np.zeros((4, 2, 8), np.float32))
    poisoned = np.zeros((4, 2, 8), np.float32)
    poisoned[3, 1, 7] = np.nan
    np.save(feats / f"{VID_B}.npy", poisoned)
    ann = _ann(tmp_path, f"{split}.json", {VID_A: [(f"{VID_A}_0", 0, 1, 2)], VID_B: [(f"{VID_B}_0", 0, 1, 2)]},
               captions=split != "test")
    ds = build_gebc(_gebc_cfg(tmp_path, {split: ann}, feats, {VID_A: 5.0, VID_B: 5.0}), split, training=training)
    assert ds[0]["q_tokens"].shape == (4, 2, 8)
    with pytest.raises(DataError, match=rf"features file .*{VID_B}\.npy holds 1 non-finite values .* index \(3, 1, 7\)"):
        ds[3]


def test_nan_and_refused_other_features(tmp_path):
    from llmva_gebc.config import OtherFeatDataConfig
    from llmva_gebc.data.gebc import DataError, build_gebc

    feats, other = tmp_path / "feats", tmp_path / "other"
    feats.mkdir()
    other.mkdir()
    for v in (VID_A, VID_B):
        np.save(feats / f"{v}.npy", np.zeros((4, 2, 8), np.float32))
    with open(other / f"{VID_A}.pkl", "wb") as f:
        pickle.dump(np.array([[1.0, np.inf, 2.0]], np.float32), f, protocol=2)
    with open(other / f"{VID_B}.pkl", "wb") as f:
        pickle.dump(torch.ones(1, 3), f)  # a torch tensor pickle names torch's rebuild functions
    ann = _ann(tmp_path, "val.json", {VID_A: [(f"{VID_A}_0", 0, 1, 2)], VID_B: [(f"{VID_B}_0", 0, 1, 2)]})
    cfg = _gebc_cfg(tmp_path, {"val": ann}, feats, {VID_A: 5.0, VID_B: 5.0})
    cfg.other_feats = [OtherFeatDataConfig("clip", str(other), 3)]
    ds = build_gebc(cfg, "val", training=False)
    with pytest.raises(DataError, match=rf"{VID_A}\.pkl holds 1 non-finite values"):
        ds[0]
    with pytest.raises(DataError, match=rf"cannot read features file .*{VID_B}\.pkl: RefusedPickleError: refused global "
                                        r"'torch\._utils\._rebuild_tensor_v2'"):
        ds[3]


def test_too_many_frames_is_an_error_naming_t_and_the_limit(tmp_path, tiny_cfg_factory, captioner, media):
    from llmva_gebc.data.gebc import DataError
    from llmva_gebc.engine.evaluator import build_eval_dataset

    feats = tmp_path / "feats"
    feats.mkdir()
    np.save(feats / f"{VID_A}.npy", np.zeros((40, 4, 32), np.float32))  # tiny: Q=4, H=32, max_frame_pos 32
    ann = _ann(tmp_path, "val.json", {VID_A: [(f"{VID_A}_0", 0, 1, 2)]})
    vi = tmp_path / "vi.json"
    vi.write_text(json.dumps({VID_A: 5.0}))
    cfg = tiny_cfg_factory("opt", f"datasets.gebc.annotations={{val: {ann}}}", f"datasets.gebc.video_info={vi}",
                           f"datasets.gebc.features_dir={feats}")
    ds = build_eval_dataset(cfg, "val")
    msg = rf"features file .*{VID_A}\.npy has T=40 frames but the model takes at most 32 \(model\.adapter\.max_frame_pos\)"
    with pytest.raises(DataError, match=msg):
        ds[0]
    # the caption API reads the same cache through the same check
    model, _, cache = captioner
    np.save(cache / "rec.npy", np.zeros((40, 4, 32), np.float32))
    try:
        with pytest.raises(DataError, match=r"rec\.npy has T=40 frames but the model takes at most 32"):
            model.caption(media["webm"], [1.0])
        np.save(cache / "rec.npy", np.full((4, 4, 32), np.nan, np.float32))
        with pytest.raises(DataError, match=r"rec\.npy holds 512 non-finite values"):
            model.caption(media["webm"], [1.0])
    finally:
        (cache / "rec.npy").unlink()


# ---------------------------------------------------------------------- 7. impossible timestamps
def test_impossible_timestamps_are_reported_with_file_and_boundary(tmp_path):
    from llmva_gebc.data.gebc import DataError, TIME_TOLERANCE, boundary_time_problem, build_gebc

    feats = tmp_path / "feats"
    feats.mkdir()
    np.save(feats / f"{VID_A}.npy", np.zeros((4, 2, 8), np.float32))
    ann = _ann(tmp_path, "train.json", {VID_A: [
        (f"{VID_A}_0", 0, 2.0, 4.0),  # fine
        (f"{VID_A}_1", 4.0, 15.0, 15.0),  # at duration + 5 s
        (f"{VID_A}_2", -1.0, -1.0, 2.0),  # at -1 s
        (f"{VID_A}_3", 6.0, 8.0, 10.0 + TIME_TOLERANCE / 2),  # next within the tolerance: fine
        (f"{VID_A}_4", 6.0, 5.0, 9.0),  # prev after t
    ]})
    with pytest.raises(DataError) as e:
        build_gebc(_gebc_cfg(tmp_path, {"train": ann}, feats, {VID_A: 10.0}), "train", training=True)
    msg = str(e.value)
    assert msg.startswith(f"{ann}: 3 boundaries with impossible times")
    assert f"'{VID_A}_1': t=15 s is outside the clip (duration 10 s)" in msg
    assert f"'{VID_A}_2': t=-1 s is outside the clip" in msg
    assert f"'{VID_A}_4': prev=6 s, t=5 s, next=9 s, duration 10 s break 0 <= prev <= t <= next <= duration" in msg
    assert "_0'" not in msg and "_3'" not in msg
    # one rule: the API refuses the same boundaries, with the same words
    from llmva_gebc.api import CaptionError, resolve_boundaries

    assert boundary_time_problem(2.0, 0, 4.0, 10.0) is None
    for spec, words in (({"timestamp": 15.0, "prev_timestamp": 4.0, "next_timestamp": 15.0}, "t=15 s is outside the clip"),
                        ({"timestamp": 5.0, "prev_timestamp": 6.0, "next_timestamp": 9.0}, "break 0 <= prev <= t")):
        with pytest.raises(CaptionError, match=words):
            resolve_boundaries([spec], 10.0)


def test_real_annotations_pass_the_timestamp_and_id_rules():
    """Every boundary of the real val and test files satisfies the rules (incl. next 8.608 s in an 8.6 s clip)."""
    from llmva_gebc.data.gebc import boundary_time_problem, load_annotations

    full = REPO.parent / "shared" / "data" / "kinetics_gebc"
    if not (full / "valset_highest_f1.json").is_file():
        pytest.skip(f"full Kinetics-GEBC annotations not present under {full}")
    info = json.loads((full / "video_info.json").read_text())
    for name, caps in (("valset_highest_f1.json", True), ("test_timestamp.json", False)):
        recs = load_annotations(full / name, with_captions=caps)
        problems = [r["boundary_id"] for r in recs if r["video_id"] in info and boundary_time_problem(
            r["timestamp"], r["prev_timestamp"], r["next_timestamp"], info[r["video_id"]])]
        assert problems == [] and len(recs) > 6000


# ------------------------------------------------------------------------------ 8. malformed ids
def test_boundary_id_must_match_its_video_key(tmp_path):
    from llmva_gebc.data.gebc import DataError, load_annotations

    ann = _ann(tmp_path, "val.json", {"7uCgdizuENF": [("7uCgdizuEN_0", 0, 1, 2)]})
    with pytest.raises(DataError, match=r"val\.json: boundary_id '7uCgdizuEN_0' \(video part '7uCgdizuEN_'\) sits under "
                                        r"video key '7uCgdizuENF'"):
        load_annotations(ann, with_captions=True)


# ------------------------------------------------------------------------------ 9. scoring inputs
def _evaluate(argv):
    sys.path.insert(0, str(REPO))
    try:
        import evaluate
    finally:
        sys.path.pop(0)
    return evaluate.main([str(a) for a in argv])


def test_score_truncated_annotations_and_lone_surrogates(tmp_path, capsys):
    from llmva_gebc.eval.submission import references_from_annotations

    refs = references_from_annotations(SAMPLE_VAL)
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps(refs))
    cut_ann = tmp_path / "val_cut.json"
    cut_ann.write_bytes(SAMPLE_VAL.read_bytes()[:5000])
    assert _evaluate(["--score", sub, "--annotations", cut_ann]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: malformed JSON in annotation file {cut_ann}: ") and "line" in err

    bid = list(refs)[7]
    bad = {b: dict(c) for b, c in refs.items()}
    bad[bid]["Subject"] = "man \ud800 in red"
    sub.write_text(json.dumps(bad))  # JSON keeps the lone surrogate as the escape \ud800
    assert _evaluate(["--score", sub, "--annotations", SAMPLE_VAL]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sub}: invalid submission: 1 captions are not valid text: '{bid}' (Subject holds a "
                          "lone surrogate '\\ud800' at character 4")
    assert len(err.strip().splitlines()) == 1
    # the same in a reference caption of the annotation file
    ann = json.loads(SAMPLE_VAL.read_text())
    vid = next(v for v, bs in ann.items() if any(b["boundary_id"] == bid for b in bs))
    next(b for b in ann[vid] if b["boundary_id"] == bid)["status_after"] = "man \ud800 in red"
    bad_ann = tmp_path / "val_surrogate.json"
    bad_ann.write_text(json.dumps(ann))
    sub.write_text(json.dumps(refs))
    assert _evaluate(["--score", sub, "--annotations", bad_ann]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad_ann}: 1 reference captions are not valid text: '{bid}' "
                                              "(status_after holds a lone surrogate")
    # the metrics themselves refuse it too (API users), naming the boundary
    from llmva_gebc.eval.metrics import MetricsError, score_captions

    with pytest.raises(MetricsError, match=rf"prediction '{bid}': caption 'Subject' holds a lone surrogate"):
        score_captions(bad, refs)


# ------------------------------------------------------------------------- 10. pickles never run
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_submission_pickle_payload_does_not_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"x": _Payload(marker)}, protocol=4)
    pickle.loads(data)  # the payload works: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    pkl = tmp_path / "submit_val.pkl"
    pkl.write_bytes(data)
    assert _evaluate(["--score", pkl, "--annotations", SAMPLE_VAL]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert err.strip() == (f"error: {pkl}: cannot read submission: RefusedPickleError: refused global 'posix.system': "
                           "a submission pickle may hold only dicts, lists and strings")


def test_feature_pickle_payload_does_not_run_and_arrays_still_load(tmp_path):
    from llmva_gebc.data.gebc import DataError, load_feature_array

    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(DataError, match=r"cannot read features file .*evil\.pkl: RefusedPickleError: refused global "
                                        r"'posix\.system'"):
        load_feature_array(bad)
    assert not marker.exists()
    want = np.arange(6, dtype=np.float32).reshape(2, 3)
    for i, obj in enumerate([want, want.tolist(), want.astype(np.float64), np.float32(2.5)]):
        for proto in (2, 4, 5):
            p = tmp_path / f"ok{i}_{proto}.pkl"
            p.write_bytes(pickle.dumps(obj, protocol=proto))
            assert np.array_equal(load_feature_array(p), np.asarray(obj))


def test_no_plain_unpickling_in_the_package():
    """Every pickle read goes through llmva_gebc.safe_pickle (no pickle.load / loads / Unpickler elsewhere,
    no np.load(allow_pickle=True), torch.load only with weights_only=True)."""
    offenders = []
    for path in sorted((REPO / "llmva_gebc").rglob("*.py")) + [REPO / "evaluate.py", REPO / "train.py"]:
        if path.name == "safe_pickle.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("load", "loads", "Unpickler") and \
                    isinstance(node.value, ast.Name) and node.value.id in ("pickle", "cPickle", "dill", "joblib"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and any(
                    k.arg == "allow_pickle" and getattr(k.value, "value", False) is True for k in node.keywords):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} (allow_pickle=True)")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func.value, "id", None) == "torch" and not any(
                    k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} (torch.load without weights_only=True)")
    assert offenders == []


# =========================================================== battery 2: values coerced or used silently
# Each of these was accepted before (exit 0 with a wrong or partial result, or a traceback): now one
# error naming the file and the key, exit status 2 from the command lines.
def test_annotation_values_that_were_coerced_or_used_silently(tmp_path):
    from llmva_gebc.data.gebc import DataError, build_gebc, load_annotations

    ann = json.loads(_ann(tmp_path, "a.json", {VID_A: [(f"{VID_A}_0", 0, 1, 2)]}).read_text())

    def bad(name, edit, needle, **kw):
        a = json.loads(json.dumps(ann))
        edit(a[VID_A][0])
        p = tmp_path / name
        p.write_text(json.dumps(a))
        with pytest.raises(DataError, match=needle):
            load_annotations(p, with_captions=True, **kw)

    # a string time was read as a number ("2.5" -> 2.5), a bool as 0 or 1 s
    bad("str.json", lambda b: b.update(timestamp="1.0"), rf"str\.json: boundary '{VID_A}_0' key 'timestamp' must be a "
                                                         "number of seconds, got str '1.0'")
    bad("bool.json", lambda b: b.update(prev_timestamp=False), r"key 'prev_timestamp' must be a number of seconds, got bool")
    # an empty or blank reference caption trained the model to say nothing and scored 0
    bad("blank.json", lambda b: b.update(status_before="  "), rf"blank\.json: boundary '{VID_A}_0' key 'status_before' is "
                                                              r"empty or blank \('  '\)")
    # an empty label made the prompt "This video describes the ."
    bad("label.json", lambda b: b.update(label=" "), rf"boundary '{VID_A}_0' key 'label' must be a GEBC label such as "
                                                     r"'Change of Action', got ' '")
    # a file without boundaries gave an empty split: training on nothing, a submission of nothing
    for name, data in (("empty.json", {}), ("nolists.json", {VID_A: [], VID_B: []})):
        (tmp_path / name).write_text(json.dumps(data))
        with pytest.raises(DataError, match=rf"{name}: no boundaries"):
            load_annotations(tmp_path / name, with_captions=False)
    # a video_info duration given as a string
    feats = tmp_path / "feats"
    feats.mkdir()
    np.save(feats / f"{VID_A}.npy", np.zeros((4, 2, 8), np.float32))
    with pytest.raises(DataError, match=rf"video_info\.json: key '{VID_A}' \(the video's duration\) must be a number of "
                                        "seconds, got str '5'"):
        build_gebc(_gebc_cfg(tmp_path, {"val": tmp_path / "a.json"}, feats, {VID_A: "5"}), "val", training=False)


@pytest.mark.parametrize("arr,needle", [
    (np.ones((4, 2, 8), np.int64), r"dtype int64; expected a floating-point array"),
    (np.ones((4, 2, 8), bool), r"dtype bool; expected a floating-point array"),
    (np.zeros((0, 2, 8), np.float32), r"has T=0 frames, shape \(0, 2, 8\)"),
])
def test_integer_and_empty_features_are_errors(tmp_path, arr, needle):
    from llmva_gebc.data.gebc import DataError, build_gebc

    feats = tmp_path / "feats"
    feats.mkdir()
    np.save(feats / f"{VID_A}.npy", arr)
    ann = _ann(tmp_path, "val.json", {VID_A: [(f"{VID_A}_0", 0, 1, 2)]})
    ds = build_gebc(_gebc_cfg(tmp_path, {"val": ann}, feats, {VID_A: 5.0}), "val", training=False)
    with pytest.raises(DataError, match=rf"features file .*{VID_A}\.npy.*{needle}"):
        ds[0]
    np.save(feats / f"{VID_A}.npy", np.ones((4, 2, 8), np.float16))  # float16 (extract --save-dtype) stays fine
    assert ds[0]["q_tokens"].dtype == torch.float32


def test_score_mode_refuses_blank_references_empty_files_and_a_folder_as_out(tmp_path, capsys):
    from llmva_gebc.eval.submission import references_from_annotations

    refs = references_from_annotations(SAMPLE_VAL)
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps(refs))
    ann = json.loads(SAMPLE_VAL.read_text())
    first = ann[next(iter(ann))][0]
    first["subject"] = ""
    blank = tmp_path / "blank.json"
    blank.write_text(json.dumps(ann))
    assert _evaluate(["--score", sub, "--annotations", blank]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {blank}: 1 reference captions are empty or blank (a reference needs words): "
        f"'{first['boundary_id']}' (subject '')")
    for name, data in (("empty.json", {}), ("nolists.json", {k: [] for k in ann})):
        (tmp_path / name).write_text(json.dumps(data))
        assert _evaluate(["--score", tmp_path / "sub.json", "--annotations", tmp_path / name]) == 2
        assert capsys.readouterr().err.startswith(f"error: {tmp_path / name}: no boundaries")
    first["subject"], first["boundary_id"] = "man", 7
    (tmp_path / "intid.json").write_text(json.dumps(ann))
    assert _evaluate(["--score", sub, "--annotations", tmp_path / "intid.json"]) == 2
    assert "has a 'boundary_id' that is not a string: 7" in capsys.readouterr().err
    # --out is checked before scoring (which can take minutes): a folder there is refused at once
    assert _evaluate(["--score", sub, "--annotations", SAMPLE_VAL, "--out", tmp_path]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {tmp_path} is a directory; give the metrics JSON file to write"


def _state_dict_file(tmp_path, name, sd):
    p = tmp_path / name
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, str(p))
    else:
        torch.save({"model": sd}, p)
    return p


def test_checkpoint_values_that_are_no_weights_are_errors(tmp_path, tiny_cfg, capsys):
    from llmva_gebc.models import build_model
    from llmva_gebc.models.checkpoint import CheckpointReadError, load_trainable, main

    model = build_model(tiny_cfg.model)
    sd = {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}
    k0 = next(iter(sd))
    before = sd[k0].clone()
    nan = dict(sd, **{k0: torch.full_like(sd[k0], float("nan"))})
    cases = [  # (file, state dict, message) -- each was loaded before: cast to float, or NaN captions
        ("int.safetensors", dict(sd, **{k0: (sd[k0] * 100).to(torch.int64)}), rf"tensor '{k0}' has dtype torch\.int64"),
        ("nan.safetensors", nan, rf"tensor '{k0}' holds {sd[k0].numel()} non-finite values"),
        ("floats.pth", dict(sd, **{k0: 1.0}), rf"'{k0}' is a float, not a tensor"),  # was an AttributeError traceback
    ]
    for name, state, needle in cases:
        p = _state_dict_file(tmp_path, name, state)
        with pytest.raises(CheckpointReadError, match=rf"{p}: {needle}"):
            load_trainable(model, p)
        assert torch.equal(dict(model.trainable_parameters())[k0].detach(), before)  # nothing loaded
    # our own weights saved as .pth: converted as they are (every key became 'adapter.adapter.*' before)
    ours = _state_dict_file(tmp_path, "ours.pth", sd)
    assert main(["convert", str(ours), str(tmp_path / "ours")]) == 0
    from safetensors.torch import load_file

    assert sorted(load_file(str(tmp_path / "ours" / "model.safetensors"))) == sorted(sd)
    load_trainable(model, tmp_path / "ours")
    run = tmp_path / "run"
    (run / "checkpoint_best").mkdir(parents=True)
    (tmp_path / "ours" / "model.safetensors").rename(run / "checkpoint_best" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=rf"checkpoint not found: {run}/model\.safetensors \({run} is a run "
                                                rf"directory: give {run}/checkpoint_best\)"):
        load_trainable(model, run)  # --ckpt RUN_DIR instead of RUN_DIR/checkpoint_best
    p = tmp_path / "orig.pth"
    torch.save({"model": {"llama_proj.weight": torch.ones(3, 3, dtype=torch.int32)}}, p)
    assert main(["convert", str(p), str(tmp_path / "out")]) == 2
    assert "tensor 'adapter.proj.weight' has dtype torch.int32" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_caption_api_checks_what_it_is_given(captioner, media, tmp_path):
    from llmva_gebc.api import CaptionError, Captioner

    model, _, _ = captioner
    q = torch.randn(4, 4, 32)  # (T, Q, H) of the tiny config
    assert len(model.caption_features(q, [1.0], 5.0)) == 1
    for q_bad, needle in ((torch.full((4, 4, 32), float("nan")), r"512 non-finite values"),  # were empty captions
                          (torch.randn(4, 5, 32), r"q_tokens must be \(T, 4, 32\) with 1 <= T <= 32 .* got shape \(4, 5, 32\)"),
                          (torch.randn(0, 4, 32), r"got shape \(0, 4, 32\)"),
                          (torch.ones(4, 4, 32, dtype=torch.int64), r"must be floating point, got torch\.int64")):
        with pytest.raises(CaptionError, match=needle):
            model.caption_features(q_bad, [1.0], 5.0)
    for spec, needle in (([True], r"timestamp must be a number of seconds, got bool True"),  # was 1 s
                         (["1.5"], r"got str '1\.5'"),
                         ([{"timestamp": 1.0, "label": 7}], r"label must be a string, got int 7"),  # was "7" in the prompt
                         ([{"timestamp": 1.0, "prev_timestamp": True}], r"prev/next timestamps must be numbers"),
                         ([{"timestamp": 1.0, "boundary_id": 5}], r"boundary_id must be a non-empty string, got 5"),
                         ([{"timestamp": 1.0, "boundary_id": "a"}, {"timestamp": 2.0, "boundary_id": "a"}],
                          r"duplicate boundary_id 'a'"),
                         (1.0, r"boundaries must be a non-empty list")):
        with pytest.raises(CaptionError, match=needle):
            model.caption_features(q, spec, 5.0)
    with pytest.raises(CaptionError, match=r"clip duration must be a positive number of seconds, got True"):
        model.caption_features(q, [0.5], True)
    with pytest.raises(CaptionError, match=r"clip duration \(--duration\) must be a positive number of seconds, got 0"):
        model.detect_boundaries(media["webm"], duration=0)  # was a ValueError traceback from the detector
    with pytest.raises(CaptionError, match=r"batch_size \(--batch-size\) must be >= 1, got 0"):  # was: the config's
        Captioner(model.cfg, model.model, batch_size=0)
    vi = tmp_path / "vi.json"
    for data, needle in (({"rec": True}, r"key 'rec' \(the video's duration\) must be a number of seconds, got bool"),
                         ([["rec", 3.0]], r"expected a JSON object \{youtube_id: duration\}, got list")):
        vi.write_text(json.dumps(data))  # True was a 1-second clip; a list of pairs was read as a dict
        with pytest.raises(CaptionError, match=needle):
            Captioner(model.cfg, model.model, video_info=str(vi)).caption(media["webm"], [0.5])


def test_caption_cli_device_and_batch_size(captioner, media, capsys):
    _, args, _ = captioner
    rc, _, err = run_caption_cli([media["webm"], *args, "--boundaries", "1", "--device", "tpu"], capsys)
    assert rc == 2 and err.strip() == "error: device 'tpu' (--device or run.device) is not a device; expected cpu, " \
                                      "cuda or cuda:N"
    rc, _, err = run_caption_cli([media["webm"], *args, "--boundaries", "1", "--batch-size", "-1"], capsys)
    assert rc == 2 and "batch_size (--batch-size) must be >= 1, got -1" in err


def test_video_folders_without_videos_or_with_two_of_one_id(tmp_path, media, capsys):
    import shutil

    from llmva_gebc import boundaries, extract, other_feats

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    cfg = ["--cfg-path", str(TINY), "--options", "model.boundary_detector.features=pixels"]
    for fn, argv in ((extract.main, ["--cfg-path", str(TINY), "--videos", str(empty), "--out", str(tmp_path / "f")]),
                     (boundaries.main, [*cfg, "--videos", str(empty), "--out", str(tmp_path / "b.json")]),
                     (other_feats.main, ["extract", "--encoder", "efficientnet_lite0", "--videos", str(empty),
                                         "--out", str(tmp_path / "o")])):
        assert fn(argv) == 2  # was exit 0 with nothing done
        assert capsys.readouterr().err.strip() == f"error: no video files (.mp4, .mkv, .webm, .avi, .mov) in {empty}"
    assert not (tmp_path / "b.json").exists()
    dup = tmp_path / "dup"
    dup.mkdir()
    shutil.copy(media["webm"], dup / "clip.webm")
    shutil.copy(media["mkv"], dup / "clip.mkv")
    assert extract.main(["--cfg-path", str(TINY), "--videos", str(dup), "--out", str(tmp_path / "f")]) == 2
    assert "two videos have the id 'clip' (clip.mkv, clip.webm)" in capsys.readouterr().err
    # an output that cannot be written is refused before any decoding
    assert boundaries.main([*cfg, "--videos", str(dup), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {tmp_path} is a directory; give the predictions JSON file to write"
    (tmp_path / "afile").write_text("x")
    assert extract.main(["--cfg-path", str(TINY), "--videos", str(media["dir"]), "--out", str(tmp_path / "afile")]) == 2
    assert f"output folder {tmp_path / 'afile'} is not writable" in capsys.readouterr().err
    assert other_feats.main(["extract", "--encoder", "efficientnet_lite0", "--videos", str(dup), "--out",
                             str(tmp_path / "o"), "--fps", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --fps must be a number > 0, got 0.0"


def test_json_with_a_key_twice_is_an_error(tmp_path, capsys):
    """json.load keeps the last of two equal keys: a video listed twice lost its first boundaries, a
    submission with an id twice was scored on the last entry, silently."""
    from llmva_gebc.data.gebc import DataError, load_annotations

    one = json.dumps({f"{VID_A}_0": {"Subject": "a", "Status_Before": "b", "Status_After": "c"}})[1:-1]
    sub = tmp_path / "sub.json"
    sub.write_text("{" + one + ", " + one + "}")
    assert _evaluate(["--score", sub, "--annotations", SAMPLE_VAL]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {sub}: cannot read submission: DuplicateKeyError: key "
                                               f"'{VID_A}_0' appears twice in one JSON object (the second would "
                                               "silently replace the first)")
    entries = json.dumps([{"boundary_id": f"{VID_A}_0", "timestamp": 1, "prev_timestamp": 0, "next_timestamp": 2,
                           "label": "Multiple"}])
    ann = tmp_path / "ann.json"
    ann.write_text(f'{{"{VID_A}": {entries}, "{VID_A}": {entries}}}')
    with pytest.raises(DataError, match=rf"annotation file {ann}: key '{VID_A}' appears twice"):
        load_annotations(ann, with_captions=False)


def test_settings_that_cannot_work_together_are_user_errors(tiny_cfg_factory, tmp_path):
    """Raised as plain ValueErrors before (a traceback, exit 1); now one error line from every CLI."""
    from llmva_gebc.data.collate import collate_gebc
    from llmva_gebc.data.gebc import build_gebc
    from llmva_gebc.errors import UserError
    from llmva_gebc.models import build_model

    with pytest.raises(UserError, match=r"model\.adapter\.hidden_size \(64\) must equal the image Q-Former width"):
        build_model(tiny_cfg_factory("opt", "model.adapter.hidden_size=64").model)
    feats = tmp_path / "feats"
    feats.mkdir()
    np.save(feats / f"{VID_A}.npy", np.zeros((4, 2, 8), np.float32))
    np.save(feats / f"{VID_B}.npy", np.zeros((6, 2, 8), np.float32))  # extracted with another num_frames
    ann = _ann(tmp_path, "val.json", {VID_A: [(f"{VID_A}_0", 0, 1, 2)], VID_B: [(f"{VID_B}_0", 0, 1, 2)]})
    ds = build_gebc(_gebc_cfg(tmp_path, {"val": ann}, feats, {VID_A: 5.0, VID_B: 5.0}), "val", training=False)
    with pytest.raises(UserError, match=rf"key 'q_tokens' has different shapes in one batch \({VID_A}_0: \(4, 2, 8\), "
                                        rf".*{VID_B}_0: \(6, 2, 8\).*every features file must have the same T"):
        collate_gebc([ds[0], ds[3]])


def test_device_names_and_other_feature_extraction_without_no_progress(tmp_path, media, capsys):
    import shutil

    from llmva_gebc import boundaries, extract, other_feats

    vids = tmp_path / "v"
    vids.mkdir()
    shutil.copy(media["mkv"], vids / "cam.mkv")
    cfg = ["--cfg-path", str(TINY), "--options", "model.boundary_detector.features=pixels"]
    for fn, argv in ((extract.main, ["--cfg-path", str(TINY), "--videos", str(vids), "--out", str(tmp_path / "f")]),
                     (boundaries.main, [*cfg, "--videos", str(vids), "--out", str(tmp_path / "b.json")]),
                     (other_feats.main, ["extract", "--encoder", "efficientnet_lite0", "--videos", str(vids),
                                         "--out", str(tmp_path / "o")])):
        assert fn([*argv, "--device", "tpu"]) == 2  # was a RuntimeError traceback from torch.device
        assert capsys.readouterr().err.strip() == ("error: device 'tpu' (--device or run.device) is not a device; "
                                                   "expected cpu, cuda or cuda:N")
    # without --no-progress (the default off a terminal): was a NameError
    assert other_feats.main(["extract", "--encoder", "efficientnet_lite0", "--image-size", "64", "--videos", str(vids),
                             "--out", str(tmp_path / "o")]) == 0
    assert np.load(tmp_path / "o" / "cam.npy").shape[1] == 1280


def test_a_broken_time_base_is_an_error_not_a_2048_second_clip(media, tmp_path, captioner, capsys):
    """An MP4 whose video timescale is 0 (a broken muxer): PyAV decodes its timestamps as 2048 s for a
    4 s clip, and the caption CLI used that duration for every reference point, silently."""
    data = bytearray((media["dir"] / "faststart_full.mp4").read_bytes())
    i = data.index(b"mdhd")
    data[i + 16:i + 20] = bytes(4)  # mdhd (version 0): size, type, version+flags, ctime, mtime, then the timescale
    bad = tmp_path / "zero_timescale.mp4"
    bad.write_bytes(bytes(data))
    with pytest.raises(VideoDecodeError, match=r"has broken timestamps: its \d+ decoded frames span \d+\.\d\d s but its "
                                               r"header declares .*4\.00 s"):
        probe_video(bad)
    _, args, _ = captioner
    rc, _, err = run_caption_cli([bad, *args, "--boundaries", "1"], capsys)
    assert rc == 2 and "has broken timestamps" in err.strip().splitlines()[-1]


def test_evaluating_a_split_without_any_features_is_an_error(tiny_cfg_factory, tmp_path):
    """Before: a submission of empty captions and CIDEr 0.0, exit status 0 (a wrong features_dir)."""
    from llmva_gebc.engine.evaluator import run_evaluation
    from llmva_gebc.errors import UserError

    empty = tmp_path / "feats"
    empty.mkdir()
    ann = _ann(tmp_path, "val.json", {VID_A: [(f"{VID_A}_0", 0, 1, 2)], VID_B: [(f"{VID_B}_0", 0, 1, 2)]})
    vi = tmp_path / "vi.json"
    vi.write_text(json.dumps({VID_A: 5.0, VID_B: 5.0}))
    cfg = tiny_cfg_factory("opt", f"datasets.gebc.annotations={{val: {ann}}}", f"datasets.gebc.video_info={vi}",
                           f"datasets.gebc.features_dir={empty}", f"run.output_dir={tmp_path / 'out'}")
    with pytest.raises(UserError, match=r"nothing to evaluate on split 'val': none of its 2 boundaries has its features"):
        run_evaluation(cfg, split="val")
    assert not list((tmp_path / "out").rglob("*.json"))  # no submission of empty captions, no metrics


def test_a_checkpoint_of_another_model_config_that_fits_is_warned_about(tiny_cfg_factory, tmp_path, caplog):
    """Weights that load (same shapes) but were trained with another model config (another LLM of the same
    width, another dropout) were used without a word."""
    import logging

    from llmva_gebc.config import save_config
    from llmva_gebc.models import build_model
    from llmva_gebc.models.checkpoint import load_trained, save_trainable

    trained = tiny_cfg_factory("opt")
    model = build_model(trained.model)
    ck = tmp_path / "run" / "checkpoint_best"
    save_trainable(model, ck)
    save_config(trained, tmp_path / "run" / "config.yaml")
    other = tiny_cfg_factory("opt", "model.adapter.hidden_dropout_prob=0.3", "model.generation.num_beams=4")
    with caplog.at_level(logging.WARNING, logger="llmva_gebc.models.checkpoint"):
        load_trained(build_model(other.model), ck, other)
    msgs = [r.getMessage() for r in caplog.records if "was trained with another model config" in r.getMessage()]
    assert len(msgs) == 1 and "model.adapter.hidden_dropout_prob: checkpoint 0.1 vs config 0.3" in msgs[0]
    assert "num_beams" not in msgs[0]  # captioning settings may differ
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmva_gebc.models.checkpoint"):
        load_trained(build_model(trained.model), ck, trained)
    assert not [r for r in caplog.records if "another model config" in r.getMessage()]
