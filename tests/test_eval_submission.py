"""Submissions: sanitising, building over every id, json/pkl round trip, validation errors, references."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from llmva_gebc.eval.submission import (
    KEYS, SubmissionError, build_submission, load_submission, references_from_annotations,
    references_from_boundaries, sanitize_caption, validate_submission, write_submission,
)

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "data" / "valset_highest_f1.sample.json"
TEST_SAMPLE = HERE / "data" / "test_timestamp.sample.json"


@pytest.mark.parametrize("raw, want", [
    ("Subject: a man in red //Status_Before: walking", "Subject a man in red Status_Before walking"),
    ("a man in red.", "a man in red"),
    ("  a man\nin red ...  ", "a man in red"),
    ("a///b", "a /b"),
    ("/0", "/0"),  # "Change of Subject" statuses keep their single slash
    ("a man. then runs.", "a man. then runs"),  # only trailing periods go
    ("", ""),
    (None, ""),
])
def test_sanitize_caption(raw, want):
    out = sanitize_caption(raw)
    assert out == want
    assert ":" not in out and "//" not in out


def test_build_submission_covers_every_id():
    ids = ["aaaaaaaaaaa_0", "aaaaaaaaaaa_1", "-bbbbbbbbbb_0"]
    preds = [
        {"boundary_id": "aaaaaaaaaaa_0", "type": "subject", "caption": "a man: in red."},
        {"boundary_id": "aaaaaaaaaaa_0", "type": "status_after", "caption": "running //fast"},
        {"boundary_id": "aaaaaaaaaaa_0", "type": "subject", "caption": "a man in red"},  # same after sanitising
        {"boundary_id": "-bbbbbbbbbb_0", "type": "status_before", "caption": "/0"},
    ]
    sub = build_submission(preds, ids)
    assert list(sub) == ids
    assert sub["aaaaaaaaaaa_0"] == {"Subject": "a man in red", "Status_Before": "", "Status_After": "running fast"}
    assert sub["aaaaaaaaaaa_1"] == {"Subject": "", "Status_Before": "", "Status_After": ""}
    assert sub["-bbbbbbbbbb_0"]["Status_Before"] == "/0"


def test_build_submission_refuses_to_drop_things():
    ids = ["aaaaaaaaaaa_0"]
    with pytest.raises(SubmissionError, match=r"1 predictions for boundary ids not in the split: 'zzzzzzzzzzz_9'"):
        build_submission([{"boundary_id": "zzzzzzzzzzz_9", "type": "subject", "caption": "x"}], ids)
    with pytest.raises(SubmissionError, match="unknown caption types"):
        build_submission([{"boundary_id": ids[0], "type": "Subject", "caption": "x"}], ids)
    with pytest.raises(SubmissionError, match="different captions for the same boundary and type: 'aaaaaaaaaaa_0:subject'"):
        build_submission([{"boundary_id": ids[0], "type": "subject", "caption": c} for c in ("x", "y")], ids)
    with pytest.raises(SubmissionError, match="duplicate boundary ids"):
        build_submission([], ids + ids)


def test_write_and_load_round_trip(tmp_path):
    refs = references_from_annotations(SAMPLE)
    sub = {b: dict(c) for b, c in refs.items()}
    sub[next(iter(sub))]["Subject"] = "ünïcode ✓"
    json_path, pkl_path = write_submission(sub, tmp_path / "run", "val")
    assert json_path.name == "submission_val.json" and pkl_path.name == "submit_val.pkl"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["submission_val.json", "submit_val.pkl"]  # no tmp left
    from_json, from_pkl = load_submission(json_path), load_submission(pkl_path)
    assert from_json == from_pkl == sub
    assert list(from_pkl) == list(sub)
    with open(pkl_path, "rb") as f:
        assert type(pickle.load(f)) is dict  # plain dict for the challenge server
    write_submission({b: {k: "" for k in KEYS} for b in sub}, tmp_path / "run", "val")  # overwrite in place
    assert load_submission(pkl_path)[next(iter(sub))]["Subject"] == ""


def test_load_submission_errors(tmp_path):
    with pytest.raises(SubmissionError, match="not found"):
        load_submission(tmp_path / "nope.json")
    (tmp_path / "s.txt").write_text("{}")
    with pytest.raises(SubmissionError, match=r"must be \.json or \.pkl"):
        load_submission(tmp_path / "s.txt")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SubmissionError, match="cannot read submission"):
        load_submission(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SubmissionError, match="got list"):
        load_submission(tmp_path / "list.json")


def test_validate_submission_messages():
    refs = references_from_annotations(SAMPLE)
    ids = list(refs)
    ok = {b: dict(c) for b, c in refs.items()}
    validate_submission(ok, ids)

    bad = {b: dict(c) for b, c in refs.items()}
    for b in ids[:7]:
        del bad[b]
    bad["zzzzzzzzzzz_0"] = {k: "" for k in KEYS}
    bad[ids[10]] = {"subject": "x", "Status_Before": "", "Status_After": ""}
    bad[ids[11]] = {"Subject": None, "Status_Before": 3, "Status_After": ""}
    bad[ids[12]] = "a man"
    with pytest.raises(SubmissionError) as e:
        validate_submission(bad, ids, path="sub.json")
    msg = str(e.value)
    assert msg.startswith("sub.json: invalid submission")
    assert f"7 boundary ids of the annotations are missing: {ids[0]!r}" in msg and "(7 in all)" in msg
    assert "1 boundary ids are not in the annotations: 'zzzzzzzzzzz_0'" in msg
    assert f"do not have exactly the keys ['Subject', 'Status_Before', 'Status_After']: '{ids[10]}' (has ['Status_After', 'Status_Before', 'subject'])" in msg
    assert f"non-string captions: '{ids[11]}' (Subject=NoneType, Status_Before=int)" in msg
    assert f"not dicts of captions: {ids[12]!r}" in msg
    with pytest.raises(SubmissionError, match="got list"):
        validate_submission([], ids)


def test_references_from_annotations():
    refs = references_from_annotations(SAMPLE)
    raw = json.loads(SAMPLE.read_text())
    assert len(refs) == sum(len(v) for v in raw.values()) == 145
    assert [f"oc2bib7RLLo_{k}" in refs for k in range(3)] == [True] * 3  # captions but no video: still a reference
    b = raw["oc2bib7RLLo"][0]
    assert refs["oc2bib7RLLo_0"] == {"Subject": b["subject"], "Status_Before": b["status_before"],
                                     "Status_After": b["status_after"]}
    assert references_from_annotations(TEST_SAMPLE) is None  # test split: no captions
    # GEBCDataset.boundaries style: captions under "references"
    recs = [{"boundary_id": "x", "references": {"subject": "s", "status_before": "b", "status_after": "a"}}]
    assert references_from_boundaries(recs) == {"x": {"Subject": "s", "Status_Before": "b", "Status_After": "a"}}
    with pytest.raises(SubmissionError, match="1 boundaries lack string captions.*'y'"):
        references_from_boundaries(recs + [{"boundary_id": "y", "subject": "s", "status_before": None, "status_after": "a"}])
