"""Caption generation over a split, distributed-safe, and the files of an evaluation run.

* :func:`generate_predictions` — batched ``model.generate`` over a dataset. With ``distributed=True``
  under ``torchrun`` each rank takes whole boundaries ``r::world`` (:class:`BoundaryShardSampler`, no
  padding, so no sample is generated twice), the per-rank results are all-gathered and merged in dataset order, and every
  (boundary, type) appears exactly once. Every rank gets the full list. Reused by the trainer's
  validation.
* :func:`run_evaluation` — what ``evaluate.py --cfg-path`` runs: model + checkpoint, dataset of the
  split, generation, then (rank 0) ``predictions_<split>.json``, ``submission_<split>.json``,
  ``submit_<split>.pkl`` (every boundary id of the annotation file, empty captions where no input),
  ``metrics_<split>.json`` when the split has references (per caption type, and per boundary label under
  ``per_label``: :func:`llmva_gebc.eval.metrics.per_label_scores`), and optionally ``report.html``, all in
  ``<run.output_dir>/<run.run_name>/``.
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from llmva_gebc import dist
from llmva_gebc.cli import progress_enabled
from llmva_gebc.data.collate import collate_for, to_device
from llmva_gebc.data.gebc import resolve_path
from llmva_gebc.data.samplers import BoundaryShardSampler, boundary_groups
from llmva_gebc.fileio import check_writable_dir, remove_stale_temporaries

logger = logging.getLogger(__name__)


def _model_device(model: Any) -> Optional[torch.device]:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return None


@torch.no_grad()
def generate_predictions(model: Any, dataset: Dataset, batch_size: int, collate_fn: Optional[Callable] = None,
                         progress: bool = True, *, distributed: bool = False, num_workers: int = 0,
                         indices: Optional[Sequence[int]] = None, generate_kwargs: Optional[Mapping[str, Any]] = None,
                         desc: str = "generate") -> List[dict]:
    """``[{"boundary_id", "type", "caption"}]`` for every sample of ``dataset`` (or of ``indices``).

    ``distributed=True``: the samples are split over the ranks without padding, the per-rank results
    are all-gathered, and every rank gets the full list, in dataset order, with each
    (boundary_id, type) exactly once. ``distributed=False`` (default): this process generates every
    sample itself (single process, or FSDP where all ranks must run in lockstep, or a caller that
    shards by itself). ``model.generate(batch, **generate_kwargs)`` must return one string per sample.
    The model is put in eval mode and its previous mode restored afterwards.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    show = progress and dist.is_main_process() and progress_enabled()  # bars only on a terminal
    shard = torch.utils.data.Subset(dataset, order)
    # Whole boundaries per rank (no padding): each sample once, and a boundary's three prompts share a
    # batch (for run.share_prefix) when batch_size is a multiple of 3.
    sampler = BoundaryShardSampler(boundary_groups(shard), rank, world)
    loader = DataLoader(shard, batch_size=batch_size, sampler=sampler,
                        collate_fn=collate_fn or collate_for(dataset), num_workers=num_workers)
    device = _model_device(model)
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    mine: List[tuple] = []  # (position in `order`, boundary_id, type, caption)
    positions = iter(sampler)
    try:
        bar = tqdm(loader, desc=desc, disable=not show, dynamic_ncols=True)
        for batch in bar:
            captions = model.generate(to_device(batch, device), **dict(generate_kwargs or {}))
            ids, types = batch["boundary_id"], batch["type"]
            if len(captions) != len(ids):
                raise RuntimeError(f"model.generate returned {len(captions)} captions for a batch of {len(ids)}")
            for bid, ctype, cap in zip(ids, types, captions):
                mine.append((next(positions), bid, ctype, str(cap)))
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    parts = dist.all_gather_object(mine) if distributed else [mine]
    merged = sorted((r for part in parts for r in part), key=lambda r: r[0])
    out, seen = [], {}
    for pos, bid, ctype, cap in merged:
        key = (bid, ctype)
        if key in seen:
            if seen[key] != cap:
                raise RuntimeError(f"two different captions generated for {bid} ({ctype})")
            continue
        seen[key] = cap
        out.append({"boundary_id": bid, "type": ctype, "caption": cap})
    return out


# ------------------------------------------------------------------------------------ evaluation run
def run_dir_of(cfg: Any) -> Path:
    return Path(str(cfg.run.output_dir)) / str(cfg.run.run_name)


def select_dataset(cfg: Any, split: str) -> str:
    """The one dataset of ``cfg.datasets`` with annotations for ``split`` (error naming them otherwise)."""
    names = [n for n, d in cfg.datasets.items() if split in (d.annotations or {})]
    if len(names) != 1:
        from llmva_gebc.config import ConfigError

        raise ConfigError(
            f"evaluation needs exactly one dataset with datasets.<name>.annotations.{split}; found {names or 'none'} "
            f"among {list(cfg.datasets)}"
        )
    return names[0]


def check_not_empty(dataset: Dataset, split: str, name: str) -> None:
    """Raise a user error when no boundary of the split has its inputs: the submission would be all empty
    captions and the metrics 0, with exit status 0 (a wrong ``features_dir``, features not extracted yet)."""
    if len(dataset) == 0:
        from llmva_gebc.errors import UserError

        n = len(getattr(dataset, "boundaries", []) or [])
        raise UserError(f"nothing to evaluate on split '{split}': none of its {n} boundaries has its features file or "
                        f"video (datasets.{name}.features_dir / videos_dir, video_info; see the log line above)")


def build_eval_dataset(cfg: Any, split: str, name: Optional[str] = None) -> Dataset:
    """``DATASETS.get(builder)(ds_cfg, split, training=False, ...)`` with the model's expected shapes."""
    from llmva_gebc.registry import DATASETS

    name = name or select_dataset(cfg, split)
    ds_cfg = cfg.datasets[name]
    builder = DATASETS.get(ds_cfg.builder)
    extra = {
        "name": name,
        "expected_hidden": cfg.model.adapter.hidden_size if "adapter" in cfg.model else None,
        "expected_queries": cfg.model.encoder.num_query_tokens if "encoder" in cfg.model else None,
        "max_frames": cfg.model.adapter.max_frame_pos if "adapter" in cfg.model else None,
        "expected_other_feats": list(cfg.model.adapter.other_feats) if "adapter" in cfg.model else None,
    }
    params = inspect.signature(builder).parameters
    accepts_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in extra.items() if accepts_kw or k in params}
    return builder(ds_cfg, split, training=False, **kwargs)


def _device_for(cfg: Any) -> torch.device:
    want = str(cfg.run.device)
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        return torch.device("cuda", dist.get_local_rank())
    return torch.device(want)


def write_outputs(run_dir: Path, split: str, predictions: List[dict], boundaries: Sequence[Mapping],
                  *, report: bool = False, videos_dir: Optional[str | Path] = None, report_max_boundaries: int = 100,
                  spice: object = "auto", spice_heap: str = "8G") -> Optional[dict]:
    """Predictions, submission (json + pkl) and, with references, metrics (+ report). Returns metrics.

    The predictions and the submission are written first: when scoring fails they are kept and the
    :class:`~llmva_gebc.eval.metrics.MetricsError` names them."""
    from llmva_gebc.eval.metrics import MetricsError, per_label_scores, score_captions
    from llmva_gebc.eval.submission import build_submission, references_from_boundaries, write_json, write_submission

    run_dir = Path(run_dir)
    all_ids = [b["boundary_id"] for b in boundaries]
    sub = build_submission(predictions, all_ids)
    write_json(predictions, run_dir / f"predictions_{split}.json")
    json_path, pkl_path = write_submission(sub, run_dir, split)
    logger.info("wrote %s and %s (%d boundaries, %d predicted captions)", json_path, pkl_path, len(sub),
                len(predictions))
    refs = references_from_boundaries(boundaries)
    metrics = None
    if refs is not None:
        try:
            metrics, details = score_captions(sub, refs, spice=spice, spice_heap=spice_heap, per_boundary=True)
        except MetricsError as e:
            raise MetricsError(f"scoring {split} failed: {e} (kept {run_dir / f'predictions_{split}.json'}, "
                               f"{json_path.name} and {pkl_path.name})") from e
        metrics["per_label"] = per_label_scores(details, {b["boundary_id"]: b.get("label", "?") for b in boundaries})
        write_json(metrics, run_dir / f"metrics_{split}.json")
        logger.info("metrics (%s): %s", split, {k: metrics[k] for k in ("CIDEr", "SPICE", "ROUGE_L", "score")})
    if report:
        from llmva_gebc.eval.report import write_report

        path = write_report(run_dir, metrics, predictions, refs, boundaries, videos_dir=videos_dir,
                            max_boundaries=report_max_boundaries, split=split)
        logger.info("wrote %s", path)
    return metrics


def run_evaluation(cfg: Any, ckpt: Optional[str] = None, split: str = "val", report: Optional[bool] = None,
                   progress: bool = True) -> Optional[dict]:
    """Evaluate ``cfg``'s model on ``split``; returns the metrics (rank 0, when references exist)."""
    from llmva_gebc.engine.trainer import set_num_threads
    from llmva_gebc.models import build_model

    dist.init_distributed(cfg.run.distributed.backend, cfg.run.distributed.timeout_s)
    logger.info("torch threads: %d (run.num_threads)", set_num_threads(cfg.run.num_threads))
    torch.manual_seed(int(cfg.run.seed))
    out_dir = run_dir_of(cfg)
    if dist.is_main_process():  # before any generation: fail in seconds, not after the whole split
        check_writable_dir(out_dir)
        remove_stale_temporaries(out_dir)
    name = select_dataset(cfg, split)
    dataset = build_eval_dataset(cfg, split, name)
    check_not_empty(dataset, split, name)
    model = build_model(cfg.model, device=_device_for(cfg))  # loads model.checkpoint when set
    if hasattr(model, "set_share_prefix"):
        model.set_share_prefix(bool(cfg.run.share_prefix))
    untrained = not ckpt and not cfg.model.checkpoint
    if ckpt:
        from llmva_gebc.models.checkpoint import load_trained

        load_trained(model, ckpt, cfg)
        logger.info("loaded trainable weights from %s", ckpt)
    elif untrained:
        logger.warning("UNTRAINED: no ckpt and no model.checkpoint; the adapter is random, and the metrics "
                       "are marked \"untrained\": true")
    predictions = generate_predictions(model, dataset, int(cfg.run.batch_size_eval), progress=progress,
                                       distributed=True, desc=f"generate {split}")
    metrics = None
    if dist.is_main_process():
        report = bool(cfg.run.report) if report is None else report
        metrics = write_outputs(out_dir, split, predictions, dataset.boundaries, report=report,
                                videos_dir=resolve_path(cfg.datasets[name].root, cfg.datasets[name].videos_dir),
                                report_max_boundaries=int(cfg.run.report_max_boundaries),
                                spice=str(cfg.run.spice), spice_heap=str(cfg.run.spice_heap))
        if metrics is not None and untrained:
            from llmva_gebc.eval.submission import write_json

            metrics["untrained"] = True
            write_json(metrics, run_dir_of(cfg) / f"metrics_{split}.json")
    dist.barrier()
    return metrics


__all__ = ["generate_predictions", "run_evaluation", "write_outputs", "build_eval_dataset", "check_not_empty",
           "select_dataset", "run_dir_of"]
