"""The embedded demo, end to end on a CPU: ``python -m llmva_gebc.demo --out demo_out`` (``make demo``).

1. generate synthetic GEBC clips (Kinetics-GEBC layout) — :mod:`llmva_gebc.data.synthetic`;
2. extract image Q-Former tokens with the frozen (tiny, seeded) encoder — :mod:`llmva_gebc.extract`;
3. make the frozen LLM: a tiny OPT, pretrained briefly (text only) on the synthetic train captions
   (:func:`llmva_gebc.models.tiny.pretrain_slot_reader`), or a real backbone from the config;
4. train the adapter against the frozen LLM — :mod:`llmva_gebc.engine.trainer`;
5. evaluate the best checkpoint on the synthetic val and test splits — :mod:`llmva_gebc.engine.evaluator`;
6. write the submissions, metrics and HTML report, and score the best constant-caption baseline (the most
   frequent train caption per type) with the same scorer.

The last line printed is ``demo: val CIDEr model=<x> baseline=<y>``.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

log = logging.getLogger("llmva_gebc.demo")



def constant_baseline(train_ann: Path, val_ann: Path) -> Dict[str, float]:
    """Score the most frequent train caption per type on val (the best constant-caption baseline)."""
    from llmva_gebc.data.gebc import TYPES, load_annotations
    from llmva_gebc.eval.metrics import SUBMISSION_KEYS, score_captions
    from llmva_gebc.eval.submission import references_from_annotations

    counts = {t: collections.Counter() for t in TYPES}
    for b in load_annotations(train_ann, with_captions=True):
        for t in TYPES:
            counts[t][b["references"][t]] += 1
    const = {SUBMISSION_KEYS[t]: counts[t].most_common(1)[0][0] for t in TYPES}
    refs = references_from_annotations(val_ann)
    metrics = score_captions({bid: dict(const) for bid in refs}, refs)
    metrics["captions"] = const
    return metrics


def _step(msg: str, t0: float) -> None:
    print(f"[demo {time.perf_counter() - t0:6.1f}s] {msg}", flush=True)


def run_demo(out: str | os.PathLike, config: str = "train_configs/demo.yaml", num_videos: int = 240, seed: int = 0,
             lm_steps: int = 300, options: Sequence[str] = ()) -> Dict[str, float]:
    from llmva_gebc.config import load_config
    from llmva_gebc.data import synthetic
    from llmva_gebc.data.gebc import TYPES, load_annotations
    from llmva_gebc.data.processors import build_processor
    from llmva_gebc.engine.evaluator import run_evaluation
    from llmva_gebc.engine.trainer import train
    from llmva_gebc.extract import extract_features, list_videos
    from llmva_gebc.models.assets import smollm2_dir
    from llmva_gebc.models.encoder import build_encoder
    from llmva_gebc.models.tiny import make_tiny_llm, pretrain_slot_reader

    t0 = time.perf_counter()
    out = Path(out).resolve()
    data, llm_dir, runs = out / "data", out / "llm", out / "runs"
    os.environ["LLMVA_DATA"] = str(data)
    os.environ["LLMVA_DEMO_LLM"] = str(llm_dir)
    os.environ["LLMVA_OUTPUT"] = str(runs)
    if "LLMVA_SMOLLM2_DIR" not in os.environ and smollm2_dir() is not None:
        os.environ["LLMVA_SMOLLM2_DIR"] = str(smollm2_dir())
    cfg = load_config(config, list(options))
    ann = cfg.datasets.gebc.annotations

    # 1. data
    if not Path(ann.train).is_file():
        synthetic.generate(data, num_videos=num_videos, seed=seed)
    _step(f"synthetic clips: {data}/videos, annotations: {data}/annotations", t0)

    # 2. features with the frozen encoder
    proc_cfg = cfg.datasets.gebc.vis_processor
    encoder = build_encoder(cfg.model.encoder)
    rep = extract_features(encoder, list_videos(data / "videos"), cfg.datasets.gebc.features_dir,
                           build_processor(proc_cfg), int(proc_cfg.num_frames), progress=False)
    if rep["failed"]:
        raise RuntimeError(f"feature extraction failed for {len(rep['failed'])} videos: {rep['failed'][:3]}")
    _step(f"features ({rep['extracted']} extracted, {rep['skipped']} cached): {cfg.datasets.gebc.features_dir}", t0)

    # 3. the frozen LLM
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

    # 4. train the adapter
    run_dir = train(cfg)
    best = run_dir / "checkpoint_best"
    _step(f"trained: {run_dir} (best checkpoint {best})", t0)

    # 5-6. evaluate val + test from the best checkpoint; submissions, metrics, report
    eval_cfg = load_config(config, [*options, f"run.run_name={cfg.run.run_name}_eval"])
    metrics = run_evaluation(eval_cfg, ckpt=str(best), split="val", report=True, progress=False)
    run_evaluation(eval_cfg, ckpt=str(best), split="test", report=False, progress=False)
    eval_dir = Path(eval_cfg.run.output_dir) / eval_cfg.run.run_name
    base = constant_baseline(Path(ann.train), Path(ann.val))
    (eval_dir / "baseline_val.json").write_text(json.dumps(base, indent=1))
    _step("evaluated", t0)

    print("\nfiles:")
    for f in ["predictions_val.json", "submission_val.json", "submit_val.pkl", "metrics_val.json", "report.html",
              "predictions_test.json", "submission_test.json", "submit_test.pkl", "baseline_val.json"]:
        p = eval_dir / f
        print(f"  {p}{'' if p.exists() else '  (MISSING)'}")
    print(f"  {run_dir / 'metrics.jsonl'}\n  {best}")
    print(f"\nval: model CIDEr {metrics['CIDEr']:.2f} ROUGE-L {metrics['ROUGE_L']:.2f} | constant baseline "
          f"CIDEr {base['CIDEr']:.2f} ROUGE-L {base['ROUGE_L']:.2f} (captions {base['captions']})")
    print(f"demo took {time.perf_counter() - t0:.0f}s")
    print(f"demo: val CIDEr model={metrics['CIDEr']:.2f} baseline={base['CIDEr']:.2f}")
    return {"model": metrics["CIDEr"], "baseline": base["CIDEr"]}


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_out", help="folder for data, LLM, runs (default: demo_out)")
    ap.add_argument("--config", default="train_configs/demo.yaml")
    ap.add_argument("--num-videos", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lm-steps", type=int, default=300, help="pretraining steps of the demo's tiny LLM")
    ap.add_argument("--options", "--cfg-options", dest="options", nargs="+", default=[], metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_demo(a.out, a.config, a.num_videos, a.seed, a.lm_steps, a.options)


if __name__ == "__main__":
    main()
