"""Challenge submissions: build, sanitise, validate, write (JSON + pickle) and load; references.

A submission is ``{boundary_id: {"Subject": str, "Status_Before": str, "Status_After": str}}`` with
EVERY boundary id of the split (boundaries without video/features get empty strings). The challenge
server takes it pickled (``submit_<split>.pkl``); the same dict as JSON (``submission_<split>.json``)
is what people inspect.

Caption sanitising (``sanitize_caption``): ``//`` and ``:`` are removed (some scorers parse
``"Subject: ... //Status_Before: ..."`` strings), whitespace (incl. line breaks) is collapsed to single
spaces and stripped, and trailing ``.`` are removed, as the winning teams do. The PTB tokenizer drops a
final stand-alone ``.`` anyway, but keeps it glued to a short last word (``"a t."`` → ``"a t."``), which
then never matches the reference word; references have no final period. A single ``/`` is kept: the
"Change of Subject" statuses ``/0`` and ``/1`` are real captions.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from llmva_gebc.data import caption_problem
from llmva_gebc.errors import UserError
from llmva_gebc.fileio import JSONFileError, read_json_file, unique_keys
from llmva_gebc.eval.metrics import SUBMISSION_KEYS, TYPES, _few, text_problem
from llmva_gebc.safe_pickle import load_pickle

KEYS = tuple(SUBMISSION_KEYS[t] for t in TYPES)  # ("Subject", "Status_Before", "Status_After")
_WS = re.compile(r"\s+")


class SubmissionError(UserError):
    """A submission or prediction list that does not fit the challenge format."""


def sanitize_caption(s: Optional[str]) -> str:
    """Remove ``//`` and ``:``, collapse whitespace, strip, drop trailing periods (see module doc)."""
    if s is None:
        return ""
    while "//" in s:
        s = s.replace("//", " ")
    s = s.replace(":", " ")
    s = _WS.sub(" ", s).strip()
    s = s.rstrip(". ").strip()
    return s


def build_submission(predictions: Iterable[Mapping], all_boundary_ids: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """``{boundary_id: {"Subject", "Status_Before", "Status_After"}}`` over ``all_boundary_ids``, in order.

    ``predictions``: ``{"boundary_id", "type", "caption"}`` records (captions are sanitised). Ids
    without a prediction get empty strings. Unknown ids or types, and two different captions for the
    same (boundary, type), are errors: nothing is dropped silently.
    """
    sub = {bid: {k: "" for k in KEYS} for bid in all_boundary_ids}
    if len(sub) != len(all_boundary_ids):
        dup = sorted({b for b in all_boundary_ids if list(all_boundary_ids).count(b) > 1})
        raise SubmissionError(f"duplicate boundary ids in the split: {_few(dup)}")
    seen: Dict[tuple, str] = {}
    unknown_ids, bad_types, conflicts = [], [], []
    for p in predictions:
        bid, ctype, cap = p["boundary_id"], p["type"], p["caption"]
        if bid not in sub:
            unknown_ids.append(bid)
            continue
        if ctype not in SUBMISSION_KEYS:
            bad_types.append(f"{bid}:{ctype}")
            continue
        if not isinstance(cap, str):
            raise SubmissionError(f"caption of {bid!r} ({ctype}) must be a string, got {type(cap).__name__}")
        cap = sanitize_caption(cap)
        if (bid, ctype) in seen and seen[(bid, ctype)] != cap:
            conflicts.append(f"{bid}:{ctype}")
            continue
        seen[(bid, ctype)] = cap
        sub[bid][SUBMISSION_KEYS[ctype]] = cap
    problems = []
    if unknown_ids:
        problems.append(f"{len(unknown_ids)} predictions for boundary ids not in the split: {_few(unknown_ids)}")
    if bad_types:
        problems.append(f"unknown caption types (expected {', '.join(TYPES)}): {_few(bad_types)}")
    if conflicts:
        problems.append(f"different captions for the same boundary and type: {_few(conflicts)}")
    if problems:
        raise SubmissionError("; ".join(problems))
    return sub


def _atomic_write(path: Path, data: bytes) -> None:
    from llmva_gebc.fileio import atomic_write_bytes

    atomic_write_bytes(path, data)


def write_json(obj, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented UTF-8 JSON, atomically (tmp file + ``os.replace``)."""
    from llmva_gebc.fileio import check_writable_dir

    path = Path(path)
    if not path.parent.is_dir():
        check_writable_dir(path.parent)
    _atomic_write(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return path


def write_submission(sub: Mapping, run_dir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """Write ``submission_<split>.json`` and ``submit_<split>.pkl`` into ``run_dir`` atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plain = {bid: {k: caps[k] for k in KEYS} for bid, caps in sub.items()}
    json_path = write_json(plain, run_dir / f"submission_{split}.json")
    pkl_path = run_dir / f"submit_{split}.pkl"
    _atomic_write(pkl_path, pickle.dumps(plain, protocol=4))
    return json_path, pkl_path


def load_submission(path: str | os.PathLike) -> dict:
    """Read a submission from ``.json`` or ``.pkl``/``.pickle``.

    A pickle is read with :func:`llmva_gebc.safe_pickle.load_pickle` (``"submission"``: dicts, lists
    and strings only), so a ``.pkl`` naming any function is refused before anything in it runs.
    Raises ``SubmissionError`` naming the file (and the refused global).
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"submission file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            with open(path, encoding="utf-8") as f:
                sub = json.load(f, object_pairs_hook=unique_keys)
        elif suffix in (".pkl", ".pickle"):
            sub = load_pickle(path, "submission")
        else:
            raise SubmissionError(f"{path}: submission must be .json or .pkl, got '{suffix}'")
    except (json.JSONDecodeError, pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, SubmissionError):
            raise
        raise SubmissionError(f"{path}: cannot read submission: {type(e).__name__}: {e}") from None
    if not isinstance(sub, dict):
        raise SubmissionError(f"{path}: a submission is a dict {{boundary_id: captions}}, got {type(sub).__name__}")
    return sub


def validate_submission(sub: Mapping, annotation_ids: Iterable[str], path: str | os.PathLike | None = None) -> None:
    """Raise ``SubmissionError`` listing every kind of problem (with a few offending ids each).

    Checks: every annotation id present, no unknown id, each entry a dict with exactly the keys
    ``Subject``, ``Status_Before``, ``Status_After``, all values strings.
    """
    where = f"{path}: " if path is not None else ""
    if not isinstance(sub, Mapping):
        raise SubmissionError(f"{where}a submission is a dict {{boundary_id: captions}}, got {type(sub).__name__}")
    ann = list(annotation_ids)
    ann_set = set(ann)
    problems: List[str] = []
    missing = [i for i in ann if i not in sub]
    unknown = [i for i in sub if i not in ann_set]
    if missing:
        problems.append(f"{len(missing)} boundary ids of the annotations are missing: {_few(missing)}")
    if unknown:
        problems.append(f"{len(unknown)} boundary ids are not in the annotations: {_few(unknown)}")
    not_dict, bad_keys, bad_vals, bad_text = [], [], [], []
    for bid, caps in sub.items():
        if not isinstance(caps, Mapping):
            not_dict.append(bid)
            continue
        if set(caps) != set(KEYS):
            bad_keys.append(f"{bid!r} (has {sorted(map(str, caps))})")
            continue
        if not all(isinstance(caps[k], str) for k in KEYS):
            bad_vals.append(f"{bid!r} ({', '.join(f'{k}={type(caps[k]).__name__}' for k in KEYS if not isinstance(caps[k], str))})")
            continue
        bad_text += [f"{bid!r} ({k} {text_problem(caps[k])})" for k in KEYS if text_problem(caps[k])]
    if not_dict:
        problems.append(f"{len(not_dict)} entries are not dicts of captions: {_few(not_dict)}")
    if bad_keys:
        problems.append(f"{len(bad_keys)} entries do not have exactly the keys {list(KEYS)}: {_few(bad_keys, 3, quote=False)}")
    if bad_vals:
        problems.append(f"{len(bad_vals)} entries have non-string captions: {_few(bad_vals, 3, quote=False)}")
    if bad_text:
        problems.append(f"{len(bad_text)} captions are not valid text: {_few(bad_text, 3, quote=False)}")
    if problems:
        raise SubmissionError(where + "invalid submission: " + "; ".join(problems))


# ------------------------------------------------------------------------------------ annotations
def load_annotations(path: str | os.PathLike) -> Dict[str, List[dict]]:
    """The Kinetics-GEBC annotation JSON ``{youtube_id: [boundary, ...]}``, checked for shape."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"annotation file not found: {path}")
    try:
        ann = read_json_file(path, "annotation")
    except JSONFileError as e:  # e.g. a truncated download
        raise SubmissionError(str(e)) from None
    if not isinstance(ann, dict) or not all(isinstance(v, list) for v in ann.values()):
        raise SubmissionError(f"{path}: expected {{youtube_id: [boundary, ...]}}")
    for vid, bs in ann.items():
        for b in bs:
            if not isinstance(b, dict) or "boundary_id" not in b:
                raise SubmissionError(f"{path}: video {vid!r} has a boundary record without 'boundary_id'")
            if not isinstance(b["boundary_id"], str):
                raise SubmissionError(f"{path}: video {vid!r} has a 'boundary_id' that is not a string: "
                                      f"{b['boundary_id']!r}")
    if not any(ann.values()):
        raise SubmissionError(f"{path}: no boundaries ({len(ann)} video keys, none with a boundary); expected "
                              "{youtube_id: [boundary, ...]}")
    return ann


def annotation_boundaries(ann: Mapping[str, Sequence[Mapping]]) -> List[Mapping]:
    """All boundary records of an annotation dict, in file order."""
    return [b for bs in ann.values() for b in bs]


def references_from_boundaries(boundaries: Sequence[Mapping], where: str = "") -> Optional[Dict[str, Dict[str, str]]]:
    """``{boundary_id: {"Subject", "Status_Before", "Status_After"}}`` from boundary records.

    Records carry the captions at top level (annotation file: ``subject``, ...) or under
    ``references`` (``GEBCDataset.boundaries``). None when no record carries captions (a test split);
    an error when only some do.
    """
    boundaries = [dict(b, **b["references"]) if isinstance(b.get("references"), Mapping) else b for b in boundaries]
    have = [all(isinstance(b.get(t), str) for t in TYPES) for b in boundaries]
    if not any(have):
        return None
    if not all(have):
        bad = [b.get("boundary_id") for b, h in zip(boundaries, have) if not h]
        raise SubmissionError(f"{where}{len(bad)} boundaries lack string captions {list(TYPES)}: {_few(bad)}")
    bad_text = [f"{b['boundary_id']!r} ({t} {text_problem(b[t])})"
                for b in boundaries for t in TYPES if text_problem(b[t])]
    if bad_text:
        raise SubmissionError(f"{where}{len(bad_text)} reference captions are not valid text: "
                              f"{_few(bad_text, 3, quote=False)}")
    blank = [f"{b['boundary_id']!r} ({t} {b[t]!r})" for b in boundaries for t in TYPES if caption_problem(b[t])]
    if blank:  # would score every prediction of those boundaries 0
        raise SubmissionError(f"{where}{len(blank)} reference captions are empty or blank (a reference needs words): "
                              f"{_few(blank, 3, quote=False)}")
    refs = {b["boundary_id"]: {SUBMISSION_KEYS[t]: b[t] for t in TYPES} for b in boundaries}
    if len(refs) != len(boundaries):
        ids = [b["boundary_id"] for b in boundaries]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise SubmissionError(f"{where}duplicate boundary ids in the annotations: {_few(dup)}")
    return refs


def references_from_annotations(path_or_ann) -> Optional[Dict[str, Dict[str, str]]]:
    """References of an annotation file (or already-loaded dict), every boundary included (also those
    whose video is unavailable, e.g. ``oc2bib7RLLo`` in val); None for a file without captions (test).
    """
    if isinstance(path_or_ann, Mapping):
        return references_from_boundaries(annotation_boundaries(path_or_ann))
    return references_from_boundaries(annotation_boundaries(load_annotations(path_or_ann)), f"{path_or_ann}: ")


__all__ = [
    "KEYS", "SubmissionError", "sanitize_caption", "build_submission", "write_submission", "write_json",
    "load_submission", "validate_submission", "load_annotations", "annotation_boundaries",
    "references_from_boundaries", "references_from_annotations",
]
