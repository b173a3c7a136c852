"""Generic event boundary detection (GEBD) scoring: F1 at a relative distance (Kinetics-GEBD).

    python -m llmva_gebc.eval.gebd --pred predictions.json --annotations valset_highest_f1.json
        --video-info video_info.json [--rel-dis 0.05] [--json]

* predictions: ``{video_id: [t1, t2, ...]}`` in seconds (the Kinetics-GEBD submission layout, as JSON;
  entries may also be ``{"timestamp": t}``), e.g. from ``python -m llmva_gebc.boundaries``;
* annotations: the Kinetics-GEBC format ``{video_id: [{"timestamp", "label", ...}, ...]}``;
* durations: ``video_info.json`` ``{video_id: seconds}``.

The measure (Shou et al., "Generic Event Boundary Detection", ICCV 2021, and the LOVEU challenge's
``eval_GEBD``): a predicted boundary is correct when ``|t - t_gt| / duration <= rel_dis`` for a
ground-truth boundary not matched yet; predictions are taken in time order, each matched to the
nearest unmatched ground truth within the tolerance, so each ground-truth boundary is matched at
most once. Counts are summed over videos: precision = TP / #predictions, recall = TP / #ground
truth, F1 = 2PR / (P + R). Videos of the annotations without predictions count their boundaries as
missed; predictions for videos not in the annotations are ignored (and counted in ``ignored``).

Per boundary kind (the GEBC label): recall is over that kind's ground truth; a matched prediction
belongs to the kind it matched, an unmatched one to the kind of the nearest ground-truth boundary
of its video (the change it most likely fired on), so the kinds' TP and FP add up to the totals.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from llmva_gebc.data import is_number

ALL = "all"


def match_video(pred: Sequence[float], gt: Sequence[float], duration: float, rel_dis: float = 0.05
                ) -> Tuple[List[Optional[int]], int]:
    """(for each prediction in time order: index of the ground truth it matched or None, TP count)."""
    used = [False] * len(gt)
    out: List[Optional[int]] = []
    for t in sorted(pred):
        best, best_d = None, math.inf
        for j, g in enumerate(gt):
            d = abs(t - g) / duration
            if not used[j] and d <= rel_dis and d < best_d:
                best, best_d = j, d
        if best is not None:
            used[best] = True
        out.append(best)
    return out, sum(used)


def _prf(tp: int, n_pred: int, n_gt: int) -> Dict[str, Any]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gt if n_gt else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "num_pred": n_pred, "num_gt": n_gt}


def score_boundaries(predictions: Mapping[str, Sequence[float]], annotations: Mapping[str, Sequence[Mapping[str, Any]]],
                     durations: Mapping[str, float], rel_dis: float = 0.05) -> Dict[str, Any]:
    """``{"all": {precision, recall, f1, tp, num_pred, num_gt}, "<label>": {...}, "videos": n, "ignored": n}``.

    Raises ValueError naming the video when a duration is missing or not positive."""
    per: Dict[str, List[int]] = {}  # label -> [tp, n_pred, n_gt]

    def acc(label: str, tp: int = 0, n_pred: int = 0, n_gt: int = 0) -> None:
        c = per.setdefault(label, [0, 0, 0])
        c[0] += tp
        c[1] += n_pred
        c[2] += n_gt

    for vid, bounds in annotations.items():
        dur = durations.get(vid)
        if not (is_number(dur) and math.isfinite(dur) and dur > 0):
            raise ValueError(f"video_info has no positive duration for video '{vid}' (got {dur!r})")
        gt = [float(b["timestamp"]) for b in bounds]
        labels = [str(b.get("label") or "unlabelled") for b in bounds]
        pred = sorted(float(t) for t in predictions.get(vid, []))
        matched, tp = match_video(pred, gt, float(dur), rel_dis)
        acc(ALL, tp, len(pred), len(gt))
        for lab in labels:
            acc(lab, n_gt=1)
        for t, m in zip(pred, matched):
            if m is not None:
                acc(labels[m], tp=1, n_pred=1)
            elif gt:
                nearest = min(range(len(gt)), key=lambda j: abs(gt[j] - t))
                acc(labels[nearest], n_pred=1)
    out: Dict[str, Any] = {k: _prf(*v) for k, v in sorted(per.items(), key=lambda kv: (kv[0] != ALL, kv[0]))}
    out.setdefault(ALL, _prf(0, 0, 0))
    out["videos"] = len(annotations)
    out["ignored"] = sum(1 for v in predictions if v not in annotations)
    out["rel_dis"] = rel_dis
    return out


def read_predictions(path: str | Path) -> Dict[str, List[float]]:
    """``{video_id: [seconds]}`` from a JSON file; raises ValueError naming the file and the key."""
    from llmva_gebc.data.gebc import read_json

    data = read_json(path, "predictions")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{video_id: [seconds, ...]}}")
    out: Dict[str, List[float]] = {}
    for vid, ts in data.items():
        if not isinstance(ts, list):
            raise ValueError(f"{path}: key '{vid}' must hold a list of timestamps, got {type(ts).__name__}")
        vals = []
        for t in ts:
            t = t.get("timestamp") if isinstance(t, dict) else t
            if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
                raise ValueError(f"{path}: key '{vid}' holds a timestamp that is not a number: {t!r}")
            vals.append(float(t))
        out[str(vid)] = vals
    return out


def format_table(res: Mapping[str, Any]) -> str:
    rows = [k for k, v in res.items() if isinstance(v, dict)]
    w = max(len(r) for r in rows)
    lines = [f"{'kind'.ljust(w)} | precision | recall |   F1   |  TP | pred |  GT",
             f"{'-' * w}-+-----------+--------+--------+-----+------+-----"]
    for r in rows:
        m = res[r]
        lines.append(f"{r.ljust(w)} | {m['precision']:9.3f} | {m['recall']:6.3f} | {m['f1']:6.3f} | "
                     f"{m['tp']:3d} | {m['num_pred']:4d} | {m['num_gt']:3d}")
    return "\n".join(lines)


def _main(argv: Sequence[str]) -> int:
    from llmva_gebc import cli
    from llmva_gebc.data.gebc import DataError, read_json
    from llmva_gebc.errors import UserError, one_line

    p = argparse.ArgumentParser(prog="python -m llmva_gebc.eval.gebd",
                                description="GEBD precision / recall / F1 at a relative distance, per boundary kind.")
    p.add_argument("--pred", required=True, help="predictions JSON {video_id: [seconds, ...]}")
    p.add_argument("--annotations", required=True, help="Kinetics-GEBC annotation JSON")
    p.add_argument("--video-info", required=True, help="video_info.json {video_id: duration in seconds}")
    p.add_argument("--rel-dis", type=float, default=0.05, help="tolerance as a fraction of the duration (0.05)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    cli.add_debug_arg(p)
    a = p.parse_args(argv)
    cli.setup_logging(a.debug, level=logging.WARNING)
    try:
        if not (math.isfinite(a.rel_dis) and 0 < a.rel_dis <= 1):
            raise ValueError(f"--rel-dis must be a fraction of the duration in (0, 1], got {a.rel_dis}")
        preds = read_predictions(a.pred)
        anns = read_json(a.annotations, "annotations")
        if not isinstance(anns, dict) or not all(isinstance(v, list) for v in anns.values()):
            raise ValueError(f"{a.annotations}: expected {{video_id: [boundary, ...]}} (Kinetics-GEBC format)")
        if not any(anns.values()):
            raise ValueError(f"{a.annotations}: no boundaries to score against")
        for vid, bs in anns.items():
            for i, b in enumerate(bs):
                if not isinstance(b, dict) or not is_number(b.get("timestamp")):
                    raise ValueError(f"{a.annotations}: video '{vid}' boundary {i} has no numeric 'timestamp'")
        info = read_json(a.video_info, "video_info")
        if not isinstance(info, dict):
            raise ValueError(f"{a.video_info}: expected a JSON object {{video_id: duration}}, got {type(info).__name__}")
        res = score_boundaries(preds, anns, info, a.rel_dis)
    except (ValueError, DataError, FileNotFoundError) as e:
        raise UserError(one_line(e)) from e  # one line, exit 2 (cli.run)
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"GEBD F1@{a.rel_dis:g}: {res[ALL]['f1']:.4f} over {res['videos']} videos"
              + (f" ({res['ignored']} predicted videos not in the annotations, ignored)" if res["ignored"] else ""))
        print(format_table(res))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2 (see :mod:`llmva_gebc.cli`)."""
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
