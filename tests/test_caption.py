"""``python -m llmva_gebc.caption``: table / JSON output equal to the API, clear errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmva_gebc.caption import format_table, main, parse_timestamps
from llmva_gebc.api import CaptionError
from llmva_gebc.data.gebc import TYPES

REPO = Path(__file__).resolve().parents[1]
CFG = str(REPO / "train_configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def clip(tmp_path_factory, tiny_llm_dirs):
    """3 synthetic clips (no feature cache: the CLI decodes) and the CLI's config arguments."""
    from llmva_gebc.data.synthetic import generate

    root = tmp_path_factory.mktemp("syn_cli")
    generate(root, num_videos=3, seed=5)
    a = root / "annotations"
    opts = [f"model.llm.path={tiny_llm_dirs['opt']}", f"datasets.gebc.video_info={a / 'video_info.json'}",
            f"datasets.gebc.features_dir={root / 'features'}"]
    vid = next(iter(json.loads((a / "val.json").read_text())))
    return root, root / "videos" / f"{vid}.mp4", ["--cfg-path", CFG, "--options", *opts]


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_and_table_equal_the_api(clip, capsys):
    import llmva_gebc

    root, video, cfg_args = clip
    ann = root / "annotations" / "val.json"
    rc, out, err = run_cli([video, "--annotations", ann, "--json", *cfg_args], capsys)
    assert rc == 0, err
    rows = json.loads(out)
    entries = json.loads(ann.read_text())[video.stem]
    assert [r["boundary_id"] for r in rows] == [e["boundary_id"] for e in entries]
    api = llmva_gebc.load(CFG, options=cfg_args[3:]).caption_annotations(video, ann)
    assert rows == api

    ts = ",".join(str(e["timestamp"]) for e in entries)
    rc, out, err = run_cli([video, "--boundaries", ts, "--labels", ",".join(e["label"] for e in entries), *cfg_args],
                           capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert [c.strip() for c in lines[0].split(" | ")][:3] == ["boundary", "t (s)", "label"]
    assert sum(r["subject"][:20] in out for r in rows) == len(rows)  # same captions as the annotation run
    assert all(f"{video.stem}_{i}" in out for i in range(len(rows)))


@pytest.mark.parametrize("case", ["missing", "corrupt", "outside", "negative", "label", "nlabels"])
def test_errors_are_clear(clip, tmp_path, capsys, case):
    root, video, cfg_args = clip
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    args, msg = {
        "missing": ([tmp_path / "nothere.mp4", "--boundaries", "1.0"], "video file not found: .*nothere.mp4"),
        "corrupt": ([bad, "--boundaries", "1.0"], "cannot decode video .*broken.mp4"),
        "outside": ([video, "--boundaries", "1.0,99"], r"boundary '\w+_1' at 99 s of .*\.mp4 \(duration from .*\): t=99 s is outside the clip \(duration [0-9.]+ s\)"),
        "negative": ([video, "--boundaries", "-0.5"], "outside the clip"),
        "label": ([video, "--boundaries", "1.0", "--labels", "Change of Mood"], "unknown boundary label"),
        "nlabels": ([video, "--boundaries", "1.0,2.0", "--labels", "multiple,multiple,multiple"], "3 labels for 2"),
    }[case]
    rc, out, err = run_cli([*args, *cfg_args], capsys)
    assert rc == 2 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    import re

    assert re.search(msg, err), err


def test_corrupt_video_with_known_duration_fails_at_decoding(clip, tmp_path, capsys):
    _, video, cfg_args = clip
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 50)
    rc, _, err = run_cli([bad, "--boundaries", "1.0", "--duration", "3", *cfg_args], capsys)
    assert rc == 2 and "cannot decode video" in err and "broken.mp4" in err


def test_parse_and_format():
    assert parse_timestamps("2.4, 6.1,") == [2.4, 6.1]
    with pytest.raises(CaptionError, match="'2.4s' is not a number"):
        parse_timestamps("2.4s")
    row = {"boundary_id": "clip_0", "boundary": 2.4, "label": "Change of Action",
           **{t: f"{t} caption " * 6 for t in TYPES}}
    row["status_after"] = "is\x0e\x0e"  # an untrained LLM's control characters are escaped
    table = format_table([row], width=30).splitlines()
    assert {line.count("|") for line in table if "|" in line} == {5}
    assert r"is\x0e\x0e" in table[2] and all(line.isprintable() for line in table)
    assert len({line.index("|") for line in table if "|" in line}) == 1
    assert "2.40" in table[2] and max(len(x) for x in table) < 200


def test_module_help_runs():
    r = subprocess.run([sys.executable, "-m", "llmva_gebc.caption", "--help"], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 0 and "--boundaries" in r.stdout and "Change of Object Being Interacted" in r.stdout


def test_boundaries_auto_detects_then_captions(clip, capsys):
    import llmva_gebc

    root, video, cfg_args = clip
    rc, out, err = run_cli([video, "--boundaries", "auto", "--json", *cfg_args], capsys)
    assert rc == 0, err
    rows = json.loads(out)
    cap = llmva_gebc.load(CFG, options=cfg_args[3:])
    det = cap.detect_boundaries(video)
    assert [r["boundary"] for r in rows] == [b["timestamp"] for b in det["boundaries"]] and rows
    assert all(0 < r["boundary"] < r["duration"] for r in rows)
    assert {r["label"] for r in rows} == {"Change of Action"}
    assert {r["label_source"] for r in rows} == {"default (model.boundary_detector.label)"}
    assert all(r["boundary_source"] == "auto" and 0 < r["score"] <= 1 for r in rows)
    # the duration's source is the detector's (not "given": the user gave none)
    import logging

    logging.getLogger("llmva_gebc.api").setLevel(logging.INFO)
    seen = []
    handler = logging.Handler()
    handler.emit = lambda rec: seen.append(rec.getMessage())
    logging.getLogger("llmva_gebc.api").addHandler(handler)
    try:
        cap.caption_auto(video)
    finally:
        logging.getLogger("llmva_gebc.api").removeHandler(handler)
    said = [m for m in seen if ": duration " in m]
    assert said and f"({det['duration_source']})" in said[-1] and "(given)" not in said[-1]
    # the captions are those of the same timestamps given by hand
    assert cap.caption(video, [r["boundary"] for r in rows]) == [
        {k: v for k, v in r.items() if k not in ("score", "boundary_source", "label_source")} for r in rows]
    rc, out, err = run_cli([video, "--boundaries", "auto", "--labels", "change of color", *cfg_args], capsys)
    assert rc == 0, err
    assert out.splitlines()[0].endswith("label: Change of Color (user)")
    rc, out, err = run_cli([video, "--boundaries", "auto", "--labels", "Multiple,Multiple", *cfg_args], capsys)
    assert rc == 2 and "one --labels value" in err
