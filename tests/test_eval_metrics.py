"""Challenge metrics: equal to pycocoevalcap called directly, sanity values, SPICE handling."""
from __future__ import annotations

import json
import logging
import os
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmva_gebc.eval import metrics as M
from llmva_gebc.eval.metrics import TYPES, MetricsError, per_boundary_rouge, ptb_tokenize, score_captions
from llmva_gebc.eval.submission import references_from_annotations

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "data" / "valset_highest_f1.sample.json"
FULL_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "kinetics_gebc" / "valset_highest_f1.json"
SUB_KEYS = {"subject": "Subject", "status_before": "Status_Before", "status_after": "Status_After"}


def _refs(path=SAMPLE):
    return references_from_annotations(path)


def _varied_predictions(refs):
    """Deterministic predictions of every kind: wrong, partial, padded, upper-case, punctuated, empty."""
    ids = list(refs)
    preds = {}
    for k, bid in enumerate(ids):
        entry = {}
        for j, t in enumerate(TYPES):
            ref = refs[bid][SUB_KEYS[t]]
            other = refs[ids[(k + 1) % len(ids)]][SUB_KEYS[t]]
            words = ref.split()
            kind = (k + j) % 6
            entry[SUB_KEYS[t]] = [
                other,
                " ".join(words[: max(1, len(words) // 2)]),
                ref + " in the video.",
                ref.upper() + "!",
                "",
                "A person, standing: near the wall //" + other,
            ][kind]
        preds[bid] = entry
    return preds


def _direct(preds, refs):
    """The organisers' loop: per type, PTBTokenizer on gts and res, then Rouge() and Cider()."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = {}
    for t in TYPES:
        gts = {b: [{"caption": refs[b][SUB_KEYS[t]]}] for b in refs}
        res = {b: [{"caption": preds[b][SUB_KEYS[t]]}] for b in refs}
        tok = PTBTokenizer()
        gts, res = tok.tokenize(gts), tok.tokenize(res)
        out[t] = {"CIDEr": Cider().compute_score(gts, res)[0] * 100, "ROUGE_L": Rouge().compute_score(gts, res)[0] * 100}
    return out


def test_equals_direct_pycocoevalcap_on_sample():
    refs = _refs()
    preds = _varied_predictions(refs)
    got = score_captions(preds, refs, spice=False)
    want = _direct(preds, refs)
    for t in TYPES:
        for m in ("CIDEr", "ROUGE_L"):
            assert got[t][m] == pytest.approx(want[t][m], abs=1e-9), (t, m)
        assert 0 < got[t]["ROUGE_L"] < 100 and got[t]["CIDEr"] > 0
    assert got["CIDEr"] == pytest.approx(np.mean([want[t]["CIDEr"] for t in TYPES]), abs=1e-9)
    assert got["ROUGE_L"] == pytest.approx(np.mean([want[t]["ROUGE_L"] for t in TYPES]), abs=1e-9)
    assert got["score_without_spice"] == pytest.approx((got["CIDEr"] + got["ROUGE_L"]) / 2, abs=1e-12)
    assert got["num_boundaries"] == len(refs) == 145


def test_layout_and_sanity_values_on_sample():
    refs = _refs()
    lower = {b: {t: c[SUB_KEYS[t]] for t in TYPES} for b, c in refs.items()}  # annotation-style keys work too
    same = score_captions(lower, refs, spice=False)
    assert list(same) == ["subject", "status_before", "status_after", "CIDEr", "SPICE", "ROUGE_L", "score",
                          "score_without_spice", "num_boundaries", "cider_reliable"]
    for t in TYPES:
        assert set(same[t]) == {"CIDEr", "SPICE", "ROUGE_L"} and same[t]["SPICE"] is None
        assert same[t]["ROUGE_L"] == pytest.approx(100.0)
    assert same["score"] is None and same["SPICE"] is None
    empty = score_captions({b: {k: "" for k in SUB_KEYS.values()} for b in refs}, refs, spice=False)
    for t in TYPES:
        assert empty[t]["ROUGE_L"] == 0.0 and empty[t]["CIDEr"] == 0.0
    assert empty["score_without_spice"] == 0.0


def test_cider_uses_whole_split_document_frequencies():
    """IDF per type over the whole split: scoring a subset does not give the subset's share."""
    refs = _refs()
    preds = _varied_predictions(refs)
    ids = list(refs)[:40]
    full, per = score_captions(preds, refs, spice=False, per_boundary=True)
    sub = score_captions({i: preds[i] for i in ids}, {i: refs[i] for i in ids}, spice=False)
    # ROUGE-L is per caption: the subset mean equals the mean of the per-boundary values ...
    assert sub["subject"]["ROUGE_L"] == pytest.approx(np.mean([per[i]["subject"]["ROUGE_L"] for i in ids]), abs=1e-9)
    # ... CIDEr is not (its IDF changed with the corpus).
    assert sub["subject"]["CIDEr"] != pytest.approx(np.mean([per[i]["subject"]["CIDEr"] for i in ids]), abs=1e-6)
    assert np.mean([per[i]["subject"]["CIDEr"] for i in refs]) == pytest.approx(full["subject"]["CIDEr"], abs=1e-9)


def test_per_boundary_rouge():
    refs = _refs()
    ids = list(refs)[:3]
    preds = {ids[0]: refs[ids[0]], ids[1]: {k: "" for k in SUB_KEYS.values()},
             ids[2]: {"Subject": "nothing alike here", "Status_Before": refs[ids[2]]["Status_Before"].upper(),
                      "Status_After": refs[ids[2]]["Status_After"] + " then more words"}}
    r = per_boundary_rouge(preds, {i: refs[i] for i in ids})
    assert r[ids[0]] == {t: pytest.approx(100.0) for t in TYPES}
    assert r[ids[1]] == {t: 0.0 for t in TYPES}
    assert r[ids[2]]["status_before"] == pytest.approx(100.0)
    assert 0 < r[ids[2]]["status_after"] < 100


def test_tokenizer_keeps_alignment_with_blanks_and_line_breaks():
    texts = ["Hello, World.", "", "   ", "a\rb c", "x\u2028y", "The END!", "\n"]
    assert ptb_tokenize(texts) == ["hello world", "", "", "a b c", "x y", "the end", ""]


def test_id_mismatch_is_an_error():
    refs = _refs()
    ids = list(refs)
    preds = {i: refs[i] for i in ids[1:]}
    preds["zzzzzzzzzzz_0"] = refs[ids[0]]
    with pytest.raises(MetricsError, match=rf"1 boundary ids have no prediction: '{ids[0]}'.*not in the references: 'zzzzzzzzzzz_0'"):
        score_captions(preds, refs, spice=False)
    with pytest.raises(MetricsError, match="missing caption 'Status_After'"):
        score_captions({i: {"Subject": "a", "Status_Before": "b"} for i in ids}, refs, spice=False)


# ------------------------------------------------------------------------------------ SPICE handling
def _touch_jars(d: Path):
    d.mkdir(parents=True, exist_ok=True)
    for j in M.CORENLP_JARS:
        (d / j).write_bytes(b"")


def test_find_spice_lib(tmp_path, monkeypatch):
    spice_dir = tmp_path / "spice"
    (spice_dir / "lib").mkdir(parents=True)
    assert M.find_spice_lib(env={}, spice_dir=spice_dir) is None
    _touch_jars(spice_dir / "lib")
    assert M.find_spice_lib(env={}, spice_dir=spice_dir) == spice_dir / "lib"
    own = tmp_path / "own"
    _touch_jars(own)
    assert M.find_spice_lib(env={M.SPICE_LIB_ENV: str(own)}, spice_dir=spice_dir) == own  # env var first
    (own / M.CORENLP_JARS[1]).unlink()  # incomplete: fall back to pycocoevalcap's lib
    assert M.find_spice_lib(env={M.SPICE_LIB_ENV: str(own)}, spice_dir=spice_dir) == spice_dir / "lib"
    # the real pycocoevalcap install: spice jar found, CoreNLP jars absent on this machine
    assert (M.pycocoevalcap_spice_dir() / "spice-1.0.jar").is_file()


def test_spice_command_has_no_cache_and_explicit_classpath(tmp_path):
    spice_dir, lib = tmp_path / "spice", tmp_path / "corenlp"
    cmd = M.spice_command(spice_dir, lib, "in.json", "out.json", java_major=17, threads=2)
    assert "-cache" not in cmd and "-jar" not in cmd
    cp = cmd[cmd.index("-cp") + 1].split(os.pathsep)
    assert cp == [str(spice_dir / "spice-1.0.jar"), str(lib / "*"), str(spice_dir / "lib" / "*")]
    i = cmd.index("edu.anu.spice.SpiceScorer")
    assert cmd[i + 1:] == ["in.json", "-out", "out.json", "-subset", "-silent", "-threads", "2"]
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in cmd[:i]
    java8 = M.spice_command(spice_dir, spice_dir / "lib", "in.json", "out.json", java_major=8)
    assert not any(a.startswith("--add-opens") for a in java8)  # Java 8 rejects the flag
    assert java8[java8.index("-cp") + 1].split(os.pathsep) == [str(spice_dir / "spice-1.0.jar"), str(spice_dir / "lib" / "*")]


def test_java_major_version_parsing(tmp_path):
    for text, want in (('openjdk version "17.0.15" 2025-04-15', 17), ('java version "1.8.0_101"', 8)):
        fake = tmp_path / f"java{want}"
        fake.write_text(f"#!/bin/sh\necho '{text}' >&2\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
        assert M.java_major_version(str(fake)) == want
    assert M.java_major_version(str(tmp_path / "nope")) is None


def test_run_spice_with_fake_java(tmp_path):
    """The runner's I/O: input JSON layout, empty predictions skipped (0), NaN → 0, scores by id."""
    seen = tmp_path / "seen.json"
    fake = tmp_path / "java"
    fake.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
if args == ["-version"]:
    print('openjdk version "17.0.1"', file=sys.stderr); sys.exit(0)
assert "-cache" not in args
main = args.index("edu.anu.spice.SpiceScorer")
items = json.load(open(args[main + 1]))
json.dump(items, open({str(seen)!r}, "w"))
out = [{{"image_id": it["image_id"], "scores": {{"All": {{"f": "NaN" if it["test"] == "nan" else 0.5, "pr": 0, "re": 0}}}}}}
       for it in items]
json.dump(out, open(args[args.index("-out") + 1], "w"))
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    gts = {"a": "a man", "b": "a dog", "c": "a cat"}
    res = {"a": "a man", "b": "", "c": "nan"}
    got = M.run_spice(gts, res, tmp_path, spice_dir=tmp_path, java=str(fake))
    assert got == {"a": 0.5, "b": 0.0, "c": 0.0}
    assert json.loads(seen.read_text()) == [{"image_id": "a", "test": "a man", "refs": ["a man"]},
                                            {"image_id": "c", "test": "nan", "refs": ["a cat"]}]


def test_spice_absent_gives_null_and_one_warning(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv(M.SPICE_LIB_ENV, str(tmp_path))  # no jars there
    monkeypatch.setattr(M, "pycocoevalcap_spice_dir", lambda: tmp_path)
    monkeypatch.setitem(M._warned, "spice", False)  # the warning comes once per process: as in a fresh one
    refs = {k: v for k, v in list(_refs().items())[:10]}
    with caplog.at_level(logging.WARNING, logger=M.__name__):
        out = score_captions(refs, refs)
    assert out["SPICE"] is None and out["score"] is None and all(out[t]["SPICE"] is None for t in TYPES)
    assert out["score_without_spice"] == pytest.approx((out["CIDEr"] + out["ROUGE_L"]) / 2)
    spice_warnings = [r for r in caplog.records if "SPICE unavailable" in r.getMessage()]
    assert len(spice_warnings) == 1
    msg = spice_warnings[0].getMessage()
    assert "\n" not in msg and "get_stanford_models" in msg and "LLMVA_SPICE_LIB" in msg
    assert "stanford-corenlp-3.6.0-models.jar" in msg
    with pytest.raises(MetricsError, match="SPICE requested"):
        score_captions(refs, refs, spice=True)


def test_spice_present_is_averaged_into_score(monkeypatch, tmp_path):
    monkeypatch.setattr(M, "find_spice_lib", lambda: tmp_path)
    calls = []

    def fake_run_spice(gts, res, lib_dir, **kw):
        calls.append(lib_dir)
        return {k: (0.2 if k.startswith("subject/") else 0.4) for k in res}

    monkeypatch.setattr(M, "run_spice", fake_run_spice)
    refs = {k: v for k, v in list(_refs().items())[:10]}
    out = score_captions(refs, refs)
    assert calls == [tmp_path]  # one JVM for the three types
    assert out["subject"]["SPICE"] == pytest.approx(20.0) and out["status_after"]["SPICE"] == pytest.approx(40.0)
    assert out["SPICE"] == pytest.approx(100 / 3)
    assert out["score"] == pytest.approx((out["CIDEr"] + out["SPICE"] + out["ROUGE_L"]) / 3)
    assert "score_without_spice" not in out


# ------------------------------------------------------------------------------------ full val split
@pytest.fixture(scope="module")
def full_val_refs():
    if not FULL_VAL.is_file():
        pytest.skip(f"full val annotations not present: {FULL_VAL}")
    return references_from_annotations(FULL_VAL)


def test_full_val_sanity_values(full_val_refs):
    refs = full_val_refs
    assert len(refs) == 6751 and "oc2bib7RLLo_0" in refs
    t0 = time.perf_counter()
    same = score_captions(refs, refs, spice=False)
    elapsed = time.perf_counter() - t0
    for t in TYPES:
        assert same[t]["ROUGE_L"] == pytest.approx(100.0, abs=1e-9)
    assert same["num_boundaries"] == 6751
    empty = score_captions({b: {k: "" for k in SUB_KEYS.values()} for b in refs}, refs, spice=False)
    for t in TYPES:
        assert empty[t]["ROUGE_L"] == 0.0 and empty[t]["CIDEr"] == 0.0
    print(f"full val scoring (6751 x 3 captions, no SPICE): {elapsed:.1f}s")


def test_broken_spice_jars_auto_scores_without_spice_required_fails(monkeypatch, caplog, tmp_path):
    """Correctly named CoreNLP jars without classes (an interrupted download) and the real SPICE jar."""
    import zipfile

    if M.pycocoevalcap_spice_dir() is None or M.java_major_version() is None:
        pytest.skip("needs java and pycocoevalcap's spice-1.0.jar")
    for name in M.CORENLP_JARS:
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    monkeypatch.setenv(M.SPICE_LIB_ENV, str(tmp_path))
    monkeypatch.setattr(M, "_SPICE_FAILED", {})
    refs = {k: v for k, v in list(_refs().items())[:10]}
    with pytest.raises(MetricsError, match=r"SPICE failed \(exit 1, jars in .*\): .*(NoClassDefFound|ClassNotFound)"):
        score_captions(refs, refs, spice="required", spice_heap="1G")
    with caplog.at_level(logging.WARNING, logger=M.__name__):
        out = score_captions(refs, refs, spice="auto", spice_heap="1G")
        again = score_captions(refs, refs, spice="auto", spice_heap="1G")
    assert out["SPICE"] is None and out["score"] is None and out == again
    assert out["score_without_spice"] == pytest.approx((out["CIDEr"] + out["ROUGE_L"]) / 2)
    failed = [r.getMessage() for r in caplog.records if "SPICE failed" in r.getMessage()]
    assert len(failed) == 1 and "scoring without SPICE" in failed[0]  # one warning, with the cause
    with pytest.raises(ValueError, match="run.spice_heap must be a JVM heap size"):
        M.check_heap("8 GB")
