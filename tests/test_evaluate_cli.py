"""``evaluate.py --score``: validation first, then the metrics JSON; full val split when present."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmva_gebc.eval.submission import KEYS, references_from_annotations, write_submission

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "valset_highest_f1.sample.json"
TEST_SAMPLE = ROOT / "tests" / "data" / "test_timestamp.sample.json"
FULL_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "kinetics_gebc" / "valset_highest_f1.json"
TYPES = ("subject", "status_before", "status_after")


def _main(argv):
    sys.path.insert(0, str(ROOT))
    try:
        import evaluate
    finally:
        sys.path.pop(0)
    return evaluate.main(argv)


def test_score_subprocess_pkl_references_as_submission(tmp_path):
    refs = references_from_annotations(SAMPLE)
    _, pkl = write_submission(refs, tmp_path, "val")
    out = tmp_path / "m.json"
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--score", str(pkl), "--annotations", str(SAMPLE),
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed == json.loads(out.read_text())
    assert [printed[t]["ROUGE_L"] for t in TYPES] == [pytest.approx(100.0)] * 3
    assert printed["num_boundaries"] == 145 and printed["score"] is None  # no SPICE jars here
    assert "SPICE unavailable" in proc.stderr


def test_score_rejects_bad_submissions(tmp_path, capsys):
    refs = references_from_annotations(SAMPLE)
    ids = list(refs)
    sub = {b: dict(c) for b, c in refs.items()}
    del sub[ids[0]]
    sub["zzzzzzzzzzz_0"] = {k: "" for k in KEYS}
    path = tmp_path / "sub.json"
    path.write_text(json.dumps(sub))
    assert _main(["--score", str(path), "--annotations", str(SAMPLE)]) == 2
    err = capsys.readouterr().err
    assert f"missing: {ids[0]!r}" in err and "not in the annotations: 'zzzzzzzzzzz_0'" in err
    assert _main(["--score", str(path), "--annotations", str(TEST_SAMPLE)]) == 2
    assert "no reference captions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _main(["--score", str(path)])  # needs --annotations


@pytest.fixture(scope="module")
def full_val():
    if not FULL_VAL.is_file():
        pytest.skip(f"full val annotations not present: {FULL_VAL}")
    return references_from_annotations(FULL_VAL)


def test_full_val_score_cli(full_val, tmp_path, capsys):
    """Acceptance on the real val file: references as submission → ROUGE-L 100, empty strings → 0."""
    json_path, pkl_path = write_submission(full_val, tmp_path / "same", "val")
    t0 = time.perf_counter()
    assert _main(["--score", str(pkl_path), "--annotations", str(FULL_VAL)]) == 0
    elapsed = time.perf_counter() - t0
    same = json.loads(capsys.readouterr().out)
    assert same["num_boundaries"] == 6751
    assert [same[t]["ROUGE_L"] for t in TYPES] == [pytest.approx(100.0, abs=1e-9)] * 3
    empty = {b: {k: "" for k in KEYS} for b in full_val}
    json_path, _ = write_submission(empty, tmp_path / "empty", "val")
    assert _main(["--score", str(json_path), "--annotations", str(FULL_VAL)]) == 0
    zero = json.loads(capsys.readouterr().out)
    assert [zero[t]["ROUGE_L"] for t in TYPES] == [0.0] * 3 and zero["CIDEr"] == 0.0
    print(f"evaluate.py --score on full val: {elapsed:.1f}s")
