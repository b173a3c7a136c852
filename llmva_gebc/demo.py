"""The embedded demo, end to end on a CPU: ``python -m llmva_gebc.demo --out demo_out`` (``make demo``).

1. generate synthetic GEBC clips (Kinetics-GEBC layout) — :mod:`llmva_gebc.data.synthetic`;
2. extract image Q-Former tokens with the frozen (tiny, seeded) encoder — :mod:`llmva_gebc.extract`;
3. extract other features with the frozen ImageNet EfficientNet-Lite0 (real pretrained weights) —
   :mod:`llmva_gebc.other_feats`; they feed the adapter's other-feature branch, the slot the original
   fills with CLIP/InternVideo/Omnivore features;
4. make the frozen LLM: a tiny OPT, pretrained briefly (text only) on the synthetic train captions
   (:func:`llmva_gebc.models.tiny.pretrain_slot_reader`), or a real backbone from the config;
5. train the adapter against the frozen LLM — :mod:`llmva_gebc.engine.trainer`;
6. evaluate the best checkpoint on the synthetic val and test splits — :mod:`llmva_gebc.engine.evaluator`;
7. write the submissions, metrics and HTML report, and score two baselines with the same scorer: the
   label-aware one (the most frequent train caption per boundary label and caption type: it knows
   what the model's prompt says) and the constant one (the most frequent train caption per type).

Torch runs on ``--threads`` threads (default 1), fixed so that the numbers do not depend on the machine.
The last line printed is ``demo: val CIDEr model=<x> label_baseline=<y> constant_baseline=<z>``.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Sequence

log = logging.getLogger("llmva_gebc.demo")

# The demo's other features: ImageNet EfficientNet-Lite0 on FRAME_FPS frames per second of the 64-px clips,
# upscaled to FRAME_SIZE px, pooled to a FRAME_GRID x FRAME_GRID grid (train_configs/demo.yaml's dim).
FRAME_FPS, FRAME_SIZE, FRAME_GRID = 4.0, 96, 2



def _most_frequent(counter: collections.Counter) -> str:
    """The most frequent caption; among ties, the one met first in the train file (``Counter`` order).

    Ties are common (few boundaries per label), and the tie-break moves the label-aware baseline a lot:
    on the default demo data, first-met gives val CIDEr 106.2, alphabetical 75.6. First-met is kept: it is
    the higher of the two, and the figure the demo's target was set against.
    """
    return counter.most_common(1)[0][0]


def baseline_captions(train_ann: Path, by_label: bool) -> Dict[str, Dict[str, str]]:
    """``{label or "*": {submission key: caption}}``: the most frequent train caption per type (per label)."""
    from llmva_gebc.data.gebc import TYPES, load_annotations
    from llmva_gebc.eval.metrics import SUBMISSION_KEYS

    counts: Dict[str, Dict[str, collections.Counter]] = collections.defaultdict(
        lambda: {t: collections.Counter() for t in TYPES})
    for b in load_annotations(train_ann, with_captions=True):
        for key in ("*", b["label"]) if by_label else ("*",):
            for t in TYPES:
                counts[key][t][b["references"][t]] += 1
    return {k: {SUBMISSION_KEYS[t]: _most_frequent(c[t]) for t in TYPES} for k, c in counts.items()}


def baseline_predictions(train_ann: Path, val_ann: Path, by_label: bool) -> Dict[str, Dict[str, str]]:
    """The baseline's val submission: each boundary gets its label's captions (a label unseen in train, or
    ``by_label=False``: the overall most frequent ones)."""
    from llmva_gebc.data.gebc import load_annotations

    caps = baseline_captions(train_ann, by_label)
    return {b["boundary_id"]: dict(caps.get(b["label"] if by_label else "*", caps["*"]))
            for b in load_annotations(val_ann, with_captions=True)}


def score_baseline(train_ann: Path, val_ann: Path, by_label: bool) -> Dict[str, Any]:
    """Metrics of a baseline on val (as :func:`llmva_gebc.engine.evaluator.write_outputs` scores the model,
    per label included), plus ``captions``."""
    from llmva_gebc.data.gebc import load_annotations
    from llmva_gebc.eval.metrics import per_label_scores, score_captions
    from llmva_gebc.eval.submission import references_from_annotations

    refs = references_from_annotations(val_ann)
    preds = baseline_predictions(train_ann, val_ann, by_label)
    metrics, details = score_captions({i: preds[i] for i in refs}, refs, spice=False, per_boundary=True)
    labels = {b["boundary_id"]: b["label"] for b in load_annotations(val_ann, with_captions=True)}
    metrics["per_label"] = per_label_scores(details, labels)
    metrics["captions"] = baseline_captions(train_ann, by_label)
    return metrics


def _step(msg: str, t0: float) -> None:
    print(f"[demo {time.perf_counter() - t0:6.1f}s] {msg}", flush=True)


def _other_feats_dir(cfg) -> Path:
    ofs = list(cfg.datasets.gebc.other_feats)
    if len(ofs) != 1:
        raise ValueError(f"the demo feeds one other feature (its EfficientNet-Lite0 vectors); the config's "
                         f"datasets.gebc.other_feats has {len(ofs)}")
    return Path(ofs[0].dir)


def run_demo(out: str | os.PathLike, config: str = "train_configs/demo.yaml", num_videos: int = 240, seed: int = 0,
             lm_steps: int = 300, options: Sequence[str] = (), threads: int = 1, frame_fps: float = FRAME_FPS,
             frame_size: int = FRAME_SIZE, frame_grid: int = FRAME_GRID) -> Dict[str, float]:
    import torch

    from llmva_gebc.config import check_resolved, load_config
    from llmva_gebc.data import synthetic
    from llmva_gebc.data.gebc import TYPES, load_annotations
    from llmva_gebc.data.processors import build_processor
    from llmva_gebc.engine.evaluator import run_evaluation
    from llmva_gebc.engine.trainer import train
    from llmva_gebc.extract import extract_features, list_videos
    from llmva_gebc.models.assets import smollm2_dir
    from llmva_gebc.models.encoder import build_encoder
    from llmva_gebc.models.frame_encoders import build_frame_encoder
    from llmva_gebc.models.tiny import make_tiny_llm, pretrain_slot_reader
    from llmva_gebc.other_feats import extract_other_features

    torch.set_num_threads(threads)  # results depend on the thread count (float summation order): fix it
    t0 = time.perf_counter()
    out = Path(out).resolve()
    data, llm_dir, runs = out / "data", out / "llm", out / "runs"
    os.environ["LLMVA_DATA"] = str(data)
    os.environ["LLMVA_DEMO_LLM"] = str(llm_dir)
    os.environ["LLMVA_OUTPUT"] = str(runs)
    if "LLMVA_SMOLLM2_DIR" not in os.environ and smollm2_dir() is not None:
        os.environ["LLMVA_SMOLLM2_DIR"] = str(smollm2_dir())
    # The demo's own run directory is remade on every run (never two runs mixed in one metrics.jsonl).
    cfg = load_config(config, [*options, "run.overwrite=true"])
    check_resolved(cfg)
    ann = cfg.datasets.gebc.annotations

    # 1. data
    if not Path(ann.train).is_file():
        synthetic.generate(data, num_videos=num_videos, seed=seed)
    _step(f"synthetic clips: {data}/videos, annotations: {data}/annotations", t0)
    videos = list_videos(data / "videos")

    # 2. image Q-Former tokens with the frozen encoder
    proc_cfg = cfg.datasets.gebc.vis_processor
    encoder = build_encoder(cfg.model.encoder)
    rep = extract_features(encoder, videos, cfg.datasets.gebc.features_dir, build_processor(proc_cfg),
                           int(proc_cfg.num_frames), progress=False)
    if rep["failed"]:
        raise RuntimeError(f"feature extraction failed for {len(rep['failed'])} videos: {rep['failed'][:3]}")
    _step(f"image Q-Former tokens ({rep['extracted']} extracted, {rep['skipped']} cached): "
          f"{cfg.datasets.gebc.features_dir}", t0)

    # 3. other features: ImageNet EfficientNet-Lite0, one vector per sampled frame
    frame_encoder = build_frame_encoder("efficientnet_lite0", grid=frame_grid, image_size=frame_size)
    want = int(cfg.datasets.gebc.other_feats[0].dim) if len(cfg.datasets.gebc.other_feats) else None
    if want != frame_encoder.dim:
        raise ValueError(f"{config}: datasets.gebc.other_feats[0].dim is {want} but EfficientNet-Lite0 with "
                         f"grid {frame_grid} gives {frame_encoder.dim}")
    rep = extract_other_features(frame_encoder, videos, _other_feats_dir(cfg), fps=frame_fps, progress=False)
    if rep["failed"]:
        raise RuntimeError(f"other-feature extraction failed for {len(rep['failed'])} videos: {rep['failed'][:3]}")
    _step(f"EfficientNet-Lite0 features ({frame_fps:g} fps, {frame_size} px, {frame_encoder.dim}-d; "
          f"{rep['extracted']} extracted, {rep['skipped']} cached): {_other_feats_dir(cfg)}", t0)

    # 4. the frozen LLM
    if Path(cfg.model.llm.path).resolve() == llm_dir and not (llm_dir / "llmva_demo_pretrained").is_file():
        boundaries = [{"label": b["label"], **b["references"]} for b in load_annotations(ann.train, with_captions=True)]
        make_tiny_llm(llm_dir, arch="opt", hidden_size=128, num_layers=2, num_heads=4, seed=seed,
                      extra_corpus=[str(b[t]) for b in boundaries for t in TYPES])
        n_vis = int(cfg.model.adapter.num_query_tokens) + (
            int(cfg.model.adapter.other_num_query_tokens) if cfg.model.adapter.other_feats else 0)
        losses = pretrain_slot_reader(llm_dir, boundaries, n_vis, steps=lm_steps, seed=seed)
        (llm_dir / "llmva_demo_pretrained").write_text(json.dumps({"steps": lm_steps, "final_loss": losses[-1]}))
        _step(f"tiny LLM pretrained on the train captions ({lm_steps} steps, loss {losses[0]:.2f} -> {losses[-1]:.2f}): {llm_dir}", t0)
    else:
        _step(f"frozen LLM: {cfg.model.llm.path}", t0)

    # 5. train the adapter
    run_dir = train(cfg)
    best = run_dir / "checkpoint_best"
    _step(f"trained: {run_dir} (best checkpoint {best})", t0)

    # 6-7. evaluate val + test from the best checkpoint; submissions, metrics, report; baselines
    eval_cfg = load_config(config, [*options, f"run.run_name={cfg.run.run_name}_eval"])
    metrics = run_evaluation(eval_cfg, ckpt=str(best), split="val", report=True, progress=False)
    run_evaluation(eval_cfg, ckpt=str(best), split="test", report=False, progress=False)
    eval_dir = Path(eval_cfg.run.output_dir) / eval_cfg.run.run_name
    label_base = score_baseline(Path(ann.train), Path(ann.val), by_label=True)
    const_base = score_baseline(Path(ann.train), Path(ann.val), by_label=False)
    (eval_dir / "baseline_val.json").write_text(json.dumps({"label": label_base, "constant": const_base}, indent=1))
    _step("evaluated", t0)

    print("\nfiles:")
    for f in ["predictions_val.json", "submission_val.json", "submit_val.pkl", "metrics_val.json", "report.html",
              "predictions_test.json", "submission_test.json", "submit_test.pkl", "baseline_val.json"]:
        p = eval_dir / f
        print(f"  {p}{'' if p.exists() else '  (MISSING)'}")
    print(f"  {run_dir / 'metrics.jsonl'}\n  {best}")
    print("\nval CIDEr (ROUGE-L)   " + "".join(f"{t:>16}" for t in TYPES) + f"{'mean':>16}")
    for name, m in (("model", metrics), ("label baseline", label_base), ("constant baseline", const_base)):
        print(f"  {name:<20}" + "".join(f"{m[t]['CIDEr']:9.2f} ({m[t]['ROUGE_L']:4.1f})" for t in TYPES)
              + f"{m['CIDEr']:9.2f} ({m['ROUGE_L']:4.1f})")
    print("per label (CIDEr model / label baseline):")
    for label, m in metrics["per_label"].items():
        b = label_base["per_label"].get(label, {}).get("CIDEr")
        print(f"  {label:<36}{m['num_boundaries']:4d} boundaries  {m['CIDEr']:7.2f} / {b if b is None else f'{b:.2f}'}")
    print(f"demo took {time.perf_counter() - t0:.0f}s ({threads} torch thread{'s' if threads > 1 else ''})")
    print(f"demo: val CIDEr model={metrics['CIDEr']:.2f} label_baseline={label_base['CIDEr']:.2f} "
          f"constant_baseline={const_base['CIDEr']:.2f}")
    return {"model": metrics["CIDEr"], "label_baseline": label_base["CIDEr"], "constant_baseline": const_base["CIDEr"]}


def _main(argv) -> None:
    from llmva_gebc import cli

    ap = argparse.ArgumentParser(prog="python -m llmva_gebc.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_out", help="folder for data, LLM, runs (default: demo_out)")
    ap.add_argument("--config", default="train_configs/demo.yaml")
    ap.add_argument("--num-videos", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lm-steps", type=int, default=300, help="pretraining steps of the demo's tiny LLM")
    ap.add_argument("--options", "--cfg-options", dest="options", nargs="+", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; results depend on it)")
    ap.add_argument("--frame-fps", type=float, default=FRAME_FPS, help=f"EfficientNet frames per second (default {FRAME_FPS:g})")
    ap.add_argument("--frame-size", type=int, default=FRAME_SIZE, help=f"EfficientNet input size (default {FRAME_SIZE})")
    ap.add_argument("--frame-grid", type=int, default=FRAME_GRID,
                    help=f"EfficientNet pooling grid (default {FRAME_GRID}; other_feats dim = grid²·1280)")
    cli.add_debug_arg(ap)
    a = ap.parse_args(argv)
    cli.setup_logging(a.debug, level=logging.WARNING)
    run_demo(a.out, a.config, a.num_videos, a.seed, a.lm_steps, a.options, a.threads, a.frame_fps, a.frame_size,
             a.frame_grid)


def main(argv=None) -> int:
    """Run the command line; a user error prints one ``error:`` line and returns 2 (see :mod:`llmva_gebc.cli`)."""
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
