"""GEBC caption metrics, computed exactly as the challenge does (pycocoevalcap 1.2).

For each caption type separately (``subject``, ``status_before``, ``status_after``), over the whole
split: PTB-tokenise references and predictions (pycocoevalcap ``PTBTokenizer``), then ROUGE-L
(``Rouge()``), CIDEr-D (``Cider()``, document frequencies from that type's references over the split)
and SPICE (the ``spice-1.0.jar`` shipped with pycocoevalcap). Scores are ×100; each metric is averaged
over the three types; the challenge score is the mean of mean-CIDEr, mean-SPICE and mean-ROUGE-L.

Differences from calling pycocoevalcap naively, none of which changes a number for ordinary captions:

* All captions of all types go through ONE tokenizer call (one JVM start instead of six). The PTB
  tokenizer works line by line (``-preserveLines``), so this equals the per-type calls; a test checks
  it against the direct per-type loop to 1e-9.
* Line separators inside a caption (``\\r``, U+2028, ...) are turned into spaces before tokenising.
  pycocoevalcap only replaces ``\\n``; any other line break silently shifts every later caption onto
  the wrong boundary.
* SPICE: we run the jar ourselves, without ``-cache`` (the LMDB cache crashes on Java >= 16), with one
  JVM for all three types (SPICE has no corpus statistics, so per-caption scores do not depend on
  which captions share a run). Predictions that are empty after tokenisation score SPICE 0 without
  being sent to the jar; a NaN from the jar counts as 0 (logged).
* SPICE needs the Stanford CoreNLP 3.6.0 jars, which pycocoevalcap downloads on first use. When they
  are absent, ``SPICE`` is null, ``score`` is null, and ``score_without_spice`` (mean of mean-CIDEr and
  mean-ROUGE-L) is reported, with a one-line warning (once per process) saying how to install them.
* ``spice="auto"`` (default) also treats a SPICE run that fails (jars present but broken, e.g. an
  interrupted download; no ``java``; out of memory) as unavailable: one warning with the cause, SPICE
  null, ``score_without_spice`` reported, and SPICE is not tried again in this process.
  ``spice="required"`` makes both cases an error; ``"off"`` skips it. The JVM heap is ``spice_heap``
  (config ``run.spice_heap``, default ``8G``).
* CIDEr-D weighs n-grams by their inverse document frequency over the scored boundaries: over one
  boundary it is 0 by definition, and over a handful it says little. Below
  :data:`MIN_CIDER_BOUNDARIES` boundaries a warning names the size and ``cider_reliable`` is false (the
  trainer then selects the best checkpoint by validation loss).
* The Java tokenizer's own messages on stderr are captured: logged at DEBUG level (``--debug``), or
  at ERROR level when it fails.

Result layout::

    {"subject": {"CIDEr": .., "SPICE": ..|None, "ROUGE_L": ..}, "status_before": {..}, "status_after": {..},
     "CIDEr": mean, "SPICE": mean|None, "ROUGE_L": mean, "score": mean of the three|None,
     "num_boundaries": n, "cider_reliable": bool}   # + "score_without_spice" when SPICE is unavailable

The evaluator adds ``"per_label"`` (:func:`per_label_scores`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from llmva_gebc.cli import captured_stderr
from llmva_gebc.data import TYPES  # the caption types, in order
from llmva_gebc.errors import UserError

logger = logging.getLogger(__name__)

# Each caption type's key in a challenge submission.
SUBMISSION_KEYS = {"subject": "Subject", "status_before": "Status_Before", "status_after": "Status_After"}

SPICE_LIB_ENV = "LLMVA_SPICE_LIB"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SPICE_INSTALL_HINT = (
    "install the Stanford CoreNLP 3.6.0 jars on a connected machine with `python -c \"from "
    "pycocoevalcap.spice.get_stanford_models import get_stanford_models; get_stanford_models()\"` "
    "(downloads into pycocoevalcap/spice/lib), or set LLMVA_SPICE_LIB to a directory containing "
    f"{CORENLP_JARS[0]} and {CORENLP_JARS[1]}"
)

SPICE_MODES = ("auto", "required", "off")
MIN_CIDER_BOUNDARIES = 10  # fewer scored boundaries: CIDEr-D's IDF has no corpus to speak of
_SPICE_FAILED: Dict[str, str] = {}  # lib dir -> cause, for spice="auto": warn and give up once per process

# Characters Java's line reader (and so ``PTBTokenizer -preserveLines``) may treat as line breaks.
_LINE_BREAKS = re.compile("[\r\n\u000b\u000c\u0085\u2028\u2029]")


_warned = {"spice": False}


class MetricsError(UserError):
    """Predictions and references that cannot be scored together."""


# ------------------------------------------------------------------------------------ inputs
def text_problem(text: str) -> Optional[str]:
    """Why ``text`` cannot go to the tokenizer (a lone UTF-16 surrogate, e.g. JSON ``"\\ud800"``,
    has no UTF-8 encoding and crashes the PTB tokenizer's Java call), or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"holds a lone surrogate {text[e.start]!r} at character {e.start}, which is not valid Unicode text"
    return None


def caption_of(entry: Mapping, ctype: str, where: str = "") -> str:
    """The ``ctype`` caption of one boundary entry, keyed ``Subject`` (submission) or ``subject``."""
    for key in (SUBMISSION_KEYS[ctype], ctype):
        if key in entry:
            value = entry[key]
            if not isinstance(value, str):
                raise MetricsError(f"{where}caption '{key}' must be a string, got {type(value).__name__}")
            problem = text_problem(value)
            if problem:
                raise MetricsError(f"{where}caption '{key}' {problem}")
            return value
    raise MetricsError(f"{where}missing caption '{SUBMISSION_KEYS[ctype]}' (keys: {sorted(entry)})")


def _few(ids: Sequence, k: int = 5, quote: bool = True) -> str:
    """The first ``k`` of ``ids`` for an error message, and how many there are in all."""
    ids = list(ids)
    shown = ", ".join(repr(i) if quote else str(i) for i in ids[:k])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > k else "")


def _check_ids(predictions: Mapping, references: Mapping) -> List[str]:
    ids = list(references)
    if not ids:
        raise MetricsError("no references to score against")
    missing = [i for i in ids if i not in predictions]
    unknown = [i for i in predictions if i not in references]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} boundary ids have no prediction: {_few(missing)}")
        if unknown:
            parts.append(f"{len(unknown)} predicted boundary ids are not in the references: {_few(unknown)}")
        raise MetricsError("; ".join(parts))
    return ids


# ------------------------------------------------------------------------------------ tokenizer
def ptb_tokenize(texts: Sequence[str]) -> List[str]:
    """pycocoevalcap's PTB tokenisation (lower-cased, punctuation removed) of each text, in one JVM.

    Blank texts map to ``""`` without reaching the tokenizer (it would return ``""`` too).
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = [""] * len(texts)
    todo = {i: [{"caption": _LINE_BREAKS.sub(" ", t)}] for i, t in enumerate(texts) if t.strip()}
    if not todo:
        return out
    with captured_stderr("Java PTBTokenizer", logger):  # "PTBTokenizer tokenized ...", "Untokenizable ..."
        tokenized = PTBTokenizer().tokenize(todo)
    if len(tokenized) != len(todo):  # a line break we did not foresee: refuse rather than misalign
        raise MetricsError(f"PTB tokenizer returned {len(tokenized)} lines for {len(todo)} captions")
    for i, toks in tokenized.items():
        out[i] = toks[0]
    return out


# ------------------------------------------------------------------------------------ SPICE
def pycocoevalcap_spice_dir() -> Optional[Path]:
    """The ``pycocoevalcap/spice`` directory (holds ``spice-1.0.jar`` and ``lib/``), or None."""
    try:
        import pycocoevalcap
    except ImportError:
        return None
    for base in getattr(pycocoevalcap, "__path__", []):  # a namespace package: no __file__
        d = Path(base) / "spice"
        if (d / "spice-1.0.jar").is_file():
            return d
    return None


def find_spice_lib(env: Optional[Mapping[str, str]] = None, spice_dir: Optional[Path] = None) -> Optional[Path]:
    """The directory holding both CoreNLP 3.6.0 jars: ``$LLMVA_SPICE_LIB`` first, then pycocoevalcap's."""
    env = os.environ if env is None else env
    candidates = []
    if env.get(SPICE_LIB_ENV):
        candidates.append(Path(env[SPICE_LIB_ENV]).expanduser())
    spice_dir = pycocoevalcap_spice_dir() if spice_dir is None else spice_dir
    if spice_dir is not None:
        candidates.append(spice_dir / "lib")
    for d in candidates:
        if all((d / j).is_file() for j in CORENLP_JARS):
            return d
    if env.get(SPICE_LIB_ENV):
        logger.warning("%s=%s does not contain %s", SPICE_LIB_ENV, env[SPICE_LIB_ENV], " and ".join(CORENLP_JARS))
    return None


def java_major_version(java: str = "java") -> Optional[int]:
    """Major version of ``java`` (8 for "1.8.0_x", 17 for "17.0.15"), None if it cannot run."""
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


# Packages the SPICE dependencies reflect into; harmless when not needed, required by some on Java >= 16.
_ADD_OPENS = ("java.base/java.lang", "java.base/java.util", "java.base/java.io", "java.base/java.nio",
              "java.base/sun.nio.ch", "java.base/java.lang.reflect", "java.base/java.text")


def spice_command(spice_dir: Path, lib_dir: Path, in_file: str, out_file: str, *, java: str = "java",
                  java_major: Optional[int] = 17, threads: Optional[int] = None,
                  max_heap: str = "8G") -> List[str]:
    """The java command line scoring ``in_file`` into ``out_file`` with SPICE, without ``-cache``.

    The jar's manifest classpath points at ``lib/`` next to it; we give the classpath explicitly so
    that the CoreNLP jars may live elsewhere (``lib_dir``) and run the main class directly.
    """
    cp = [str(Path(spice_dir) / "spice-1.0.jar"), str(Path(lib_dir) / "*")]
    if Path(lib_dir).resolve() != (Path(spice_dir) / "lib").resolve():
        cp.append(str(Path(spice_dir) / "lib" / "*"))  # SceneGraphParser, Meteor, ... ship with pycocoevalcap
    cmd = [java, f"-Xmx{max_heap}"]
    if java_major is not None and java_major >= 9:
        for pkg in _ADD_OPENS:
            cmd.append(f"--add-opens={pkg}=ALL-UNNAMED")
    cmd += ["-cp", os.pathsep.join(cp), "edu.anu.spice.SpiceScorer", str(in_file), "-out", str(out_file),
            "-subset", "-silent"]
    if threads:
        cmd += ["-threads", str(int(threads))]
    return cmd


def _java_cause(stderr: str) -> str:
    """The informative line of a failed JVM's stderr (the exception), else its last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if re.search(r"(Error|Exception)\b", ln) and not ln.startswith("at "):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def check_heap(value: str, key: str = "run.spice_heap") -> str:
    """A JVM ``-Xmx`` size such as ``8G``, ``512m``; ``ValueError`` naming ``key`` otherwise."""
    value = str(value).strip()
    if not re.fullmatch(r"[1-9]\d*[kKmMgGtT]?", value):
        raise ValueError(f"{key} must be a JVM heap size such as 8G or 512m, got {value!r}")
    return value


def run_spice(gts: Mapping[str, str], res: Mapping[str, str], lib_dir: Path, *,
              spice_dir: Optional[Path] = None, java: str = "java", max_heap: str = "8G") -> Dict[str, float]:
    """SPICE F-score (0..1) of each tokenised prediction ``res[k]`` against its reference ``gts[k]``.

    Empty predictions get 0 without reaching the jar. Raises :class:`MetricsError` with the JVM's
    exception when the jar fails (or ``java`` cannot run).
    """
    spice_dir = pycocoevalcap_spice_dir() if spice_dir is None else Path(spice_dir)
    if spice_dir is None:
        raise MetricsError("pycocoevalcap's spice-1.0.jar not found")
    scores = {k: 0.0 for k in res}
    items = [{"image_id": k, "test": res[k], "refs": [gts[k]]} for k in res if res[k].strip()]
    if not items:
        return scores
    with tempfile.TemporaryDirectory(prefix="llmva_spice_") as tmp:
        in_file, out_file = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
        with open(in_file, "w") as f:
            json.dump(items, f)
        cmd = spice_command(spice_dir, lib_dir, in_file, out_file, java=java, java_major=java_major_version(java),
                            max_heap=check_heap(max_heap))
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        except OSError as e:
            raise MetricsError(f"SPICE failed: cannot run {java!r}: {e}") from e
        if proc.returncode != 0 or not os.path.isfile(out_file):
            logger.debug("SPICE command: %s\nstderr: %s", " ".join(cmd), proc.stderr[-3000:])
            raise MetricsError(f"SPICE failed (exit {proc.returncode}, jars in {lib_dir}): {_java_cause(proc.stderr)}")
        with open(out_file) as f:
            results = json.load(f)
    nan = 0
    for item in results:
        try:
            value = float(item["scores"]["All"]["f"])
        except (TypeError, ValueError, KeyError):
            value = float("nan")
        if math.isnan(value):
            nan += 1
            value = 0.0
        scores[item["image_id"]] = value
    if nan:
        logger.warning("SPICE returned NaN for %d of %d captions; counted as 0", nan, len(items))
    return scores


# ------------------------------------------------------------------------------------ scoring
def _tokenize_all(predictions: Mapping, references: Mapping, ids: Sequence[str]
                  ) -> Dict[str, Tuple[Dict[str, List[str]], Dict[str, List[str]]]]:
    """{type: (gts, res)} with pycocoevalcap's layout ``{id: [tokenised caption]}``, one JVM call."""
    texts: List[str] = []
    for ctype in TYPES:
        texts += [caption_of(references[i], ctype, f"reference {i!r}: ") for i in ids]
        texts += [caption_of(predictions[i], ctype, f"prediction {i!r}: ") for i in ids]
    toks = ptb_tokenize(texts)
    out, n, pos = {}, len(ids), 0
    for ctype in TYPES:
        refs, preds = toks[pos:pos + n], toks[pos + n:pos + 2 * n]
        pos += 2 * n
        out[ctype] = ({i: [r] for i, r in zip(ids, refs)}, {i: [p] for i, p in zip(ids, preds)})
    return out


def _cider(gts: Dict[str, List[str]], res: Dict[str, List[str]]) -> Tuple[float, np.ndarray]:
    from pycocoevalcap.cider.cider import Cider

    if not any(r[0].split() for r in gts.values()):  # no reference n-grams: Cider() asserts on max([])
        return 0.0, np.zeros(len(gts))
    return Cider().compute_score(gts, res)


def spice_mode(spice: object) -> str:
    """``"auto"`` / ``"required"`` / ``"off"`` from a mode name or a bool (True = required, False/None = off)."""
    if isinstance(spice, str):  # YAML reads a bare `off` as false; OmegaConf then stores "False"
        spice = {"false": False, "no": False, "none": None, "true": True}.get(spice.strip().lower(), spice)
    if spice is True:
        return "required"
    if spice is False or spice is None:
        return "off"
    if spice not in SPICE_MODES:
        raise ValueError(f"spice must be one of {', '.join(SPICE_MODES)}, got {spice!r}")
    return str(spice)


def score_captions(predictions: Mapping[str, Mapping[str, str]], references: Mapping[str, Mapping[str, str]],
                   *, spice: object = "auto", spice_heap: str = "8G", per_boundary: bool = False):
    """Challenge metrics of ``predictions`` against ``references`` (both ``{boundary_id: captions}``).

    Captions are keyed ``Subject``/``Status_Before``/``Status_After`` (submission layout) or
    ``subject``/``status_before``/``status_after``. Every reference id needs a prediction and vice versa.
    ``spice``: "auto" (use it when the CoreNLP jars are found and work, else warn once and report SPICE
    null), "required" (or True: missing jars or a failing SPICE raise :class:`MetricsError`), "off" (or
    False). ``spice_heap``: the JVM's ``-Xmx``. Fewer than :data:`MIN_CIDER_BOUNDARIES` boundaries: a
    warning, ``cider_reliable`` false.
    With ``per_boundary=True`` returns ``(metrics, {boundary_id: {type: {"CIDEr", "ROUGE_L", "SPICE"}}})``.
    """
    from pycocoevalcap.rouge.rouge import Rouge

    mode = spice_mode(spice)
    ids = _check_ids(predictions, references)
    lib_dir = None
    if mode != "off":
        lib_dir = find_spice_lib()
        if lib_dir is None:
            if mode == "required":
                raise MetricsError(f"SPICE requested (spice: required) but its jars are missing: {SPICE_INSTALL_HINT}")
            if not _warned["spice"]:  # once per process, not at every validation
                _warned["spice"] = True
                logger.warning("SPICE unavailable (score=null, see score_without_spice): %s", SPICE_INSTALL_HINT)
        elif mode == "auto" and str(lib_dir) in _SPICE_FAILED:
            logger.debug("SPICE skipped: it failed earlier in this process (%s)", _SPICE_FAILED[str(lib_dir)])
            lib_dir = None
    if len(ids) < MIN_CIDER_BOUNDARIES:
        logger.warning("scoring %d boundaries: CIDEr-D's document frequencies need a corpus (CIDEr is 0 by "
                       "definition over one boundary); fewer than %d boundaries give no meaningful CIDEr",
                       len(ids), MIN_CIDER_BOUNDARIES)
    tokenized = _tokenize_all(predictions, references, ids)

    spice_scores: Optional[Dict[Tuple[str, str], float]] = None
    if lib_dir is not None:
        keys = [f"{ctype}/{i}" for ctype in TYPES for i in ids]
        gts = {f"{c}/{i}": tokenized[c][0][i][0] for c in TYPES for i in ids}
        res = {f"{c}/{i}": tokenized[c][1][i][0] for c in TYPES for i in ids}
        try:
            flat = run_spice(gts, res, lib_dir, max_heap=spice_heap)
        except MetricsError as e:
            if mode == "required":
                raise MetricsError(f"{e} (spice: required; set it to auto to score without SPICE)") from e
            _SPICE_FAILED[str(lib_dir)] = str(e)
            logger.warning("%s; scoring without SPICE from now on (SPICE=null, see score_without_spice; "
                           "spice: required makes this an error). To repair: %s", e, SPICE_INSTALL_HINT)
            flat = None
        if flat is not None:
            spice_scores = {(k.split("/", 1)[0], k.split("/", 1)[1]): flat[k] for k in keys}

    metrics: Dict[str, object] = {}
    details: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {i: {} for i in ids}
    for ctype in TYPES:
        gts, res = tokenized[ctype]
        rouge_mean, rouge_each = Rouge().compute_score(gts, res)
        cider_mean, cider_each = _cider(gts, res)
        spice_mean = None
        if spice_scores is not None:
            spice_mean = float(np.mean([spice_scores[(ctype, i)] for i in ids])) * 100
        metrics[ctype] = {"CIDEr": float(cider_mean) * 100, "SPICE": spice_mean, "ROUGE_L": float(rouge_mean) * 100}
        if per_boundary:
            for k, i in enumerate(ids):
                details[i][ctype] = {
                    "CIDEr": float(cider_each[k]) * 100, "ROUGE_L": float(rouge_each[k]) * 100,
                    "SPICE": None if spice_scores is None else spice_scores[(ctype, i)] * 100,
                }
    for name in ("CIDEr", "SPICE", "ROUGE_L"):
        vals = [metrics[c][name] for c in TYPES]  # type: ignore[index]
        metrics[name] = None if any(v is None for v in vals) else float(np.mean(vals))
    if metrics["SPICE"] is None:
        metrics["score"] = None
        metrics["score_without_spice"] = float(np.mean([metrics["CIDEr"], metrics["ROUGE_L"]]))
    else:
        metrics["score"] = float(np.mean([metrics["CIDEr"], metrics["SPICE"], metrics["ROUGE_L"]]))
    metrics["num_boundaries"] = len(ids)
    metrics["cider_reliable"] = len(ids) >= MIN_CIDER_BOUNDARIES
    return (metrics, details) if per_boundary else metrics


def per_label_scores(details: Mapping[str, Mapping[str, Mapping[str, Optional[float]]]],
                     labels: Mapping[str, str]) -> Dict[str, Dict[str, object]]:
    """Scores per boundary label from :func:`score_captions`' ``per_boundary`` details.

    ``{label: {type: {"CIDEr", "ROUGE_L", "SPICE"}, "CIDEr": mean over types, "ROUGE_L": .., "SPICE": ..,
    "num_boundaries": n}}``: each value is the mean of the label's per-boundary scores. CIDEr-D keeps the
    document frequencies of the WHOLE split (as the corpus score, which is the mean of the per-boundary
    scores), so the boundary-weighted mean of the labels' CIDEr is the split's CIDEr; rescoring a label's
    subset alone would give other numbers. SPICE is None where it was not computed.
    """
    groups: Dict[str, List[str]] = {}
    for bid in details:
        groups.setdefault(labels.get(bid, "?"), []).append(bid)
    out: Dict[str, Dict[str, object]] = {}
    for label in sorted(groups):
        ids = groups[label]
        entry: Dict[str, object] = {}
        for ctype in TYPES:
            entry[ctype] = {m: (None if any(details[i][ctype][m] is None for i in ids)
                                else float(np.mean([details[i][ctype][m] for i in ids])))
                            for m in ("CIDEr", "SPICE", "ROUGE_L")}
        for m in ("CIDEr", "SPICE", "ROUGE_L"):
            vals = [entry[c][m] for c in TYPES]  # type: ignore[index]
            entry[m] = None if any(v is None for v in vals) else float(np.mean(vals))
        entry["num_boundaries"] = len(ids)
        out[label] = entry
    return out


def headline_score(metrics: Mapping) -> float:
    """``score`` when SPICE was computed, else ``score_without_spice`` (for model selection/logging)."""
    return metrics["score"] if metrics.get("score") is not None else metrics["score_without_spice"]


def per_boundary_rouge(predictions: Mapping[str, Mapping[str, str]], references: Mapping[str, Mapping[str, str]]
                       ) -> Dict[str, Dict[str, float]]:
    """ROUGE-L ×100 of each boundary and type (``{boundary_id: {type: score}}``); needs no corpus."""
    from pycocoevalcap.rouge.rouge import Rouge

    ids = [i for i in references if i in predictions]
    if not ids:
        return {}
    tokenized = _tokenize_all(predictions, references, ids)
    out: Dict[str, Dict[str, float]] = {i: {} for i in ids}
    for ctype in TYPES:
        gts, res = tokenized[ctype]
        _, each = Rouge().compute_score(gts, res)
        for k, i in enumerate(ids):
            out[i][ctype] = float(each[k]) * 100
    return out


__all__ = [
    "TYPES", "SUBMISSION_KEYS", "MetricsError", "score_captions", "per_boundary_rouge", "per_label_scores",
    "headline_score", "ptb_tokenize", "text_problem", "find_spice_lib", "spice_command", "run_spice",
    "java_major_version", "caption_of",
    "pycocoevalcap_spice_dir", "SPICE_INSTALL_HINT", "SPICE_MODES", "MIN_CIDER_BOUNDARIES", "spice_mode",
    "check_heap",
]
