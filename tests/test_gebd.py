"""GEBD F1 at a relative distance (eval/gebd.py) and the automatic boundary detector (boundaries.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from llmva_gebc.boundaries import change_scores, detect, detector_settings, pick_peaks
from llmva_gebc.eval.gebd import main as gebd_main
from llmva_gebc.eval.gebd import match_video, score_boundaries

ANN = {
    "v1": [{"timestamp": 2.0, "label": "Change of Color"}, {"timestamp": 5.0, "label": "Change of Action"}],
    "v2": [{"timestamp": 4.0, "label": "Change of Action"}],
}
INFO = {"v1": 10.0, "v2": 10.0}


def test_match_is_one_to_one_within_the_relative_distance():
    # tolerance 0.05 * 10 s = 0.5 s; 2.3 and 1.8 both lie near 2.0, only one may take it
    matched, tp = match_video([2.3, 1.8, 5.6, 9.0], [2.0, 5.0], 10.0, 0.05)
    assert tp == 1 and matched == [0, None, None, None]  # time order: 1.8 takes 2.0; 2.3 finds it used
    assert match_video([5.5], [5.0], 10.0, 0.05)[1] == 1  # |Δ|/dur = 0.05 exactly counts
    assert match_video([5.51], [5.0], 10.0, 0.05)[1] == 0


def test_scores_per_kind_add_up():
    pred = {"v1": [1.9, 2.2, 7.5], "v2": [4.1], "other": [1.0]}
    r = score_boundaries(pred, ANN, INFO)
    a = r["all"]
    assert (a["tp"], a["num_pred"], a["num_gt"]) == (2, 4, 3)
    assert a["precision"] == pytest.approx(0.5) and a["recall"] == pytest.approx(2 / 3)
    assert a["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    color, action = r["Change of Color"], r["Change of Action"]
    # 2.2 is a second hit near the colour change: a false positive charged to that kind;
    # 7.5 is nearest to the action boundary at 5.0
    assert (color["tp"], color["num_pred"], color["num_gt"]) == (1, 2, 1)
    assert (action["tp"], action["num_pred"], action["num_gt"]) == (1, 2, 2)
    assert color["tp"] + action["tp"] == a["tp"] and color["num_pred"] + action["num_pred"] == a["num_pred"]
    assert r["ignored"] == 1 and r["videos"] == 2
    with pytest.raises(ValueError, match="no positive duration for video 'v2'"):
        score_boundaries(pred, ANN, {"v1": 10.0})


def test_cli_scores_and_rejects_bad_files(tmp_path, capsys):
    (tmp_path / "ann.json").write_text(json.dumps(ANN))
    (tmp_path / "info.json").write_text(json.dumps(INFO))
    (tmp_path / "pred.json").write_text(json.dumps({"v1": [2.0, {"timestamp": 5.2}], "v2": [4.0]}))
    args = ["--annotations", str(tmp_path / "ann.json"), "--video-info", str(tmp_path / "info.json")]
    assert gebd_main(["--pred", str(tmp_path / "pred.json"), *args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["all"]["f1"] == 1.0 and out["rel_dis"] == 0.05
    (tmp_path / "bad.json").write_text(json.dumps({"v1": [2.0, "late"]}))
    assert gebd_main(["--pred", str(tmp_path / "bad.json"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.json" in err and "'v1'" in err and len(err.splitlines()) == 1


def test_detector_finds_appearance_and_speed_changes():
    rng = np.random.default_rng(0)
    T, dur = 48, 6.0  # 8 frames per second
    x = np.zeros((T, 16))
    x[:, 0] = np.where(np.arange(T) < 16, 0.0, 1.0)  # an appearance step at frame 16 (t = 2.0 s)
    x[:, 1] = np.minimum(np.arange(T), 32) * 0.2  # moves steadily, stops at frame 32 (t = 4.0 s)
    x += 0.003 * rng.standard_normal(x.shape)
    res = detect(x, dur)
    assert len(res["timestamps"]) == 2
    assert abs(res["timestamps"][0] - 2.0) <= 0.3 and abs(res["timestamps"][1] - 4.0) <= 0.3
    assert max(res["scores"]) == 1.0 and len(res["curve"]) == T - 1
    # without the speed term the stop is no peak (appearance changes all along the motion)
    res = detect(x, dur, {"motion_weight": 0.0})
    assert any(abs(t - 2.0) <= 0.3 for t in res["timestamps"])
    assert not any(abs(t - 4.0) <= 0.3 for t in res["timestamps"])
    with pytest.raises(ValueError, match="at least 2 frames"):
        change_scores(x[:1], 2)
    with pytest.raises(ValueError, match=r"model\.boundary_detector\.threshold must be in \[0, 1\]"):
        detector_settings({"threshold": 2.0})


def test_peaks_respect_threshold_and_min_gap():
    curve = np.array([0.0, 0.6, 0.2, 0.55, 0.1, 1.0, 0.3, 0.25, 0.0])
    times = np.arange(9) * 0.25
    assert pick_peaks(curve, times, 0.5, 0.6) == [1, 5]  # 0.55 at 0.75 s is 0.5 s from 0.6 at 0.25 s
    assert pick_peaks(curve, times, 0.5, 0.0) == [1, 3, 5]
    assert pick_peaks(curve, times, 0.99, 0.0) == [5]
    assert pick_peaks(np.zeros(5), times[:5], 0.5, 0.1) == [0]  # the maximum always stays


def test_detector_on_synthetic_clips_with_pixel_features():
    """The detector on rendered synthetic clips whose boundaries are known (no encoding, no model)."""
    import torch

    from llmva_gebc.boundaries import pixel_features
    from llmva_gebc.data.synthetic import make_clip

    ann, info, preds = {}, {}, {}
    for i in range(12):
        frames, bnds, dur = make_clip(3, i, 64, 8)
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # (T, 3, 64, 64)
        vid = f"c{i}"
        ann[vid] = [{"timestamp": f / 8, "label": lab} for f, lab, *_ in bnds]
        info[vid] = dur
        preds[vid] = detect(pixel_features(x), dur)["timestamps"]
    r = score_boundaries(preds, ann, info)
    # colour changes are all found; the total is well above what random guesses score
    assert r["Change of Color"]["num_gt"] >= 3 and r["Change of Color"]["recall"] == 1.0, r
    assert r["all"]["f1"] >= 0.6, r["all"]


def test_detector_features_from_a_frame_encoder(tmp_path):
    """``features: efficientnet_lite0`` (the frame-encoder registry) on a synthetic clip; bad names are errors."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from pathlib import Path

    from llmva_gebc.boundaries import BoundaryDetector
    from llmva_gebc.config import load_config
    from llmva_gebc.data.synthetic import generate

    repo = Path(__file__).resolve().parents[1]
    generate(tmp_path, num_videos=3, seed=1)
    info = json.loads((tmp_path / "annotations" / "video_info.json").read_text())
    vid = sorted(info)[0]
    # few, small frames: the test checks the plumbing, benchmarks/gebd.py measures the quality
    cfg = load_config(repo / "train_configs" / "tiny.yaml", ["model.boundary_detector.features=efficientnet_lite0",
                                                             "model.boundary_detector.fps=2",
                                                             "model.boundary_detector.encoder_args={image_size: 64}"])
    det = BoundaryDetector(cfg)
    feats = det.frame_features(tmp_path / "videos" / f"{vid}.mp4", info[vid])
    assert feats.shape == (max(round(info[vid] * 2), 4), 1280) and np.isfinite(feats).all()
    res = det(tmp_path / "videos" / f"{vid}.mp4", info[vid])
    assert res["timestamps"] and all(0 < t < info[vid] for t in res["timestamps"])
    bad = load_config(repo / "train_configs" / "tiny.yaml", ["model.boundary_detector.features=resnet"])
    with pytest.raises(ValueError, match=r"features must be one of qformer, pixels or a frame encoder \(.*"
                                         r"efficientnet_lite0.*\), got 'resnet'"):
        BoundaryDetector(bad)


def test_cli_refuses_what_scored_zero_or_one_second_silently(tmp_path, capsys):
    (tmp_path / "ann.json").write_text(json.dumps(ANN))
    (tmp_path / "info.json").write_text(json.dumps(INFO))
    (tmp_path / "pred.json").write_text(json.dumps({"v1": [2.0]}))
    args = ["--pred", str(tmp_path / "pred.json"), "--video-info", str(tmp_path / "info.json")]
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "bool.json").write_text(json.dumps({"v1": True, "v2": 10.0}))  # True was a 1-second clip
    for argv, needle in ((["--annotations", str(tmp_path / "ann.json"), "--rel-dis", "0"], "--rel-dis must be a fraction"),
                         (["--annotations", str(tmp_path / "empty.json")], "no boundaries to score against"),
                         (["--annotations", str(tmp_path / "ann.json"), "--video-info", str(tmp_path / "list.json")],
                          "expected a JSON object {video_id: duration}, got list"),
                         (["--annotations", str(tmp_path / "ann.json"), "--video-info", str(tmp_path / "bool.json")],
                          "no positive duration for video 'v1' (got True)")):
        assert gebd_main([*args, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1, err
