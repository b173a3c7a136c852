"""The demo's baselines, per-label scores and report table, and (slow) the demo end to end, twice."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmva_gebc.demo import baseline_captions, baseline_predictions, main

TYPES = ("subject", "status_before", "status_after")


def _b(vid, k, label, subj, before, after):
    return {"boundary_id": f"{vid}_{k}", "timestamp": 1.0, "prev_timestamp": 0, "next_timestamp": 2.0,
            "label": label, "subject": subj, "status_before": before, "status_after": after}


@pytest.fixture
def anns(tmp_path):
    train = {
        "aaaaaaaaaaa": [_b("aaaaaaaaaaa", 0, "Change of Color", "red circle", "red", "blue"),
                        _b("aaaaaaaaaaa", 1, "Change of Color", "red circle", "blue", "green")],
        "bbbbbbbbbbb": [_b("bbbbbbbbbbb", 0, "Change of Color", "blue square", "red", "green"),
                        _b("bbbbbbbbbbb", 1, "Change of Action", "blue square", "moving left", "staying still"),
                        _b("bbbbbbbbbbb", 2, "Change of Action", "blue square", "moving up", "staying still"),
                        _b("bbbbbbbbbbb", 3, "Multiple", "blue square", "moving up", "staying still")],
    }
    val = {"ccccccccccc": [_b("ccccccccccc", 0, "Change of Action", "blue square", "moving up", "moving left"),
                           _b("ccccccccccc", 1, "Change of Subject", "green circle", "/0", "/1")]}
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "val.json").write_text(json.dumps(val))
    return tmp_path / "train.json", tmp_path / "val.json"


def test_label_and_constant_baselines(anns):
    train, val = anns
    caps = baseline_captions(train, by_label=True)
    assert caps["Change of Color"] == {"Subject": "red circle", "Status_Before": "red", "Status_After": "green"}
    # ties: the caption met first in the train file ("moving left" before "moving up")
    assert caps["Change of Action"] == {"Subject": "blue square", "Status_Before": "moving left",
                                        "Status_After": "staying still"}
    assert caps["*"] == {"Subject": "blue square", "Status_Before": "red", "Status_After": "staying still"}
    preds = baseline_predictions(train, val, by_label=True)
    assert preds["ccccccccccc_0"] == caps["Change of Action"]
    assert preds["ccccccccccc_1"] == caps["*"]  # a label unseen in train: the overall most frequent
    const = baseline_predictions(train, val, by_label=False)
    assert const["ccccccccccc_0"] == const["ccccccccccc_1"] == baseline_captions(train, by_label=False)["*"]


def test_per_label_scores_average_to_the_split():
    from llmva_gebc.eval.metrics import per_label_scores, score_captions

    refs = {"a_0": {"Subject": "red circle", "Status_Before": "moving left", "Status_After": "staying still"},
            "b_0": {"Subject": "blue square", "Status_Before": "red", "Status_After": "green"},
            "c_0": {"Subject": "blue circle", "Status_Before": "moving up", "Status_After": "moving left"},
            "d_0": {"Subject": "green triangle", "Status_Before": "/0", "Status_After": "/1"}}
    preds = {"a_0": {"Subject": "red circle", "Status_Before": "moving up", "Status_After": "staying still"},
             "b_0": {"Subject": "blue circle", "Status_Before": "red", "Status_After": "blue"},
             "c_0": {"Subject": "blue circle", "Status_Before": "moving up", "Status_After": "moving left"},
             "d_0": {"Subject": "green triangle", "Status_Before": "/1", "Status_After": "/1"}}
    labels = {"a_0": "Change of Action", "b_0": "Change of Color", "c_0": "Change of Action", "d_0": "Change of Subject"}
    metrics, details = score_captions(preds, refs, spice=False, per_boundary=True)
    per = per_label_scores(details, labels)
    assert sorted(per) == ["Change of Action", "Change of Color", "Change of Subject"]
    assert [per[k]["num_boundaries"] for k in sorted(per)] == [2, 1, 1]
    for t in TYPES:
        for m in ("CIDEr", "ROUGE_L"):
            weighted = sum(p[t][m] * p["num_boundaries"] for p in per.values()) / 4
            assert weighted == pytest.approx(metrics[t][m], abs=1e-9)
        assert per["Change of Action"][t]["SPICE"] is None
    assert per["Change of Action"]["CIDEr"] == pytest.approx(sum(per["Change of Action"][t]["CIDEr"] for t in TYPES) / 3)
    assert per["Change of Action"]["status_after"]["ROUGE_L"] == pytest.approx(100.0)


def test_report_has_the_per_label_table(tmp_path):
    from llmva_gebc.eval.report import write_report

    m = {"CIDEr": 1.0, "SPICE": None, "ROUGE_L": 2.0, "score": None, "score_without_spice": 1.5, "num_boundaries": 1}
    m.update({t: {"CIDEr": 1.0, "SPICE": None, "ROUGE_L": 2.0} for t in TYPES})
    m["per_label"] = {"Change of Color": {**{t: {"CIDEr": 123.45, "SPICE": None, "ROUGE_L": 5.0} for t in TYPES},
                                          "CIDEr": 123.45, "SPICE": None, "ROUGE_L": 5.0, "num_boundaries": 1}}
    html = write_report(tmp_path, m, [], None, []).read_text()
    assert "Per boundary label" in html and "Change of Color" in html and "123.45" in html


@pytest.mark.slow
def test_demo_end_to_end_twice_same_final_line(tmp_path, capsys):
    """A tiny demo (12 clips, 1 epoch) run twice from scratch prints the same final line."""
    args = ["--num-videos", "12", "--lm-steps", "5", "--frame-size", "32",
            "--options", "run.max_epoch=1", "run.batch_size_train=6"]
    lines = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        main(["--out", str(out), *args])
        lines.append(capsys.readouterr().out.strip().splitlines()[-1])
        eval_dir = out / "runs" / "demo_eval"
        metrics = json.loads((eval_dir / "metrics_val.json").read_text())
        assert set(metrics["per_label"]) and all(t in metrics for t in TYPES)
        base = json.loads((eval_dir / "baseline_val.json").read_text())
        assert set(base) == {"label", "constant"} and "per_label" in base["label"]
        assert "Per boundary label" in (eval_dir / "report.html").read_text()
        feats = sorted((out / "data" / "features" / "effnet").glob("*.npy"))
        assert len(feats) == 12
    assert lines[0] == lines[1] and lines[0].startswith("demo: val CIDEr model=")
    assert "label_baseline=" in lines[0] and "constant_baseline=" in lines[0]
    vids = sorted((tmp_path / "run0" / "data" / "videos").iterdir())
    assert all(v.read_bytes() == (tmp_path / "run1" / "data" / "videos" / v.name).read_bytes() for v in vids)
