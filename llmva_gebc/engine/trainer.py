"""The training runner behind ``train.py`` (registered as ``RUNNERS["runner_base"]``).

``train(cfg) -> run_dir`` runs the whole recipe: seeds (``run.seed + rank``), model, datasets, a
deterministic resumable loader, DDP or FSDP2 wrapping, AdamW + LR schedule by global step, gradient
accumulation, optional clipping, AMP, validation each epoch (generate + score when the evaluator is
available, otherwise the loss), ``checkpoint_best/`` + ``checkpoint_last/``, and test predictions
from the best checkpoint at the end.

Run directory ``<run.output_dir>/<run.run_name>/``: ``config.yaml`` (resolved), ``env.json``
(package versions, git commit), ``metrics.jsonl`` (one JSON object per log step, per validation and
per epoch), ``checkpoint_last/``, ``checkpoint_best/``, ``tensorboard/`` (``run.tensorboard``),
``submission_<split>.json`` (test predictions).

Exact resume: the sampler's epoch order is a pure function of (seed, epoch); per-sample randomness
is seeded by (seed, epoch, index) (:class:`~llmva_gebc.dist.SeededDataset`); the loader never draws
from the global RNG; the checkpoint stores the micro-batch position inside the epoch and every
rank's RNG states. Resuming skips the consumed batches in the sampler (no data is loaded for them)
and restores the RNGs, so the loss sequence and weights match an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from llmva_gebc import dist
from llmva_gebc.cli import progress_enabled
from llmva_gebc.config import WEIGHT_NEUTRAL_MODEL_KEYS, ConfigError, check_resolved, config_diff, save_config
from llmva_gebc.data.collate import collate_for, to_device
from llmva_gebc.engine import checkpointing as ckpt
from llmva_gebc.fileio import check_writable_dir, remove_stale_temporaries, write_error
from llmva_gebc.engine.optim import build_optimizer, build_scheduler, schedule_kwargs
from llmva_gebc.errors import RunDirError, UserError, one_line
from llmva_gebc.models.checkpoint import CheckpointMismatchError
from llmva_gebc.registry import DATASETS, RUNNERS

log = logging.getLogger("llmva_gebc.train")
PLAIN_LOG_SECONDS = 30.0  # without a terminal (no progress bar): one training log line at most this often


class NonFiniteLossError(FloatingPointError, UserError):
    """A NaN/inf training loss with ``run.nan_policy=stop``: the data (features of huge values), the learning
    rate or ``run.amp``, not a bug; the message names the step and the batch's boundary ids (one error line,
    exit 2; ``checkpoint_last/`` holds the last good weights)."""


# ------------------------------------------------------------------------------------ helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_num_threads(n: Optional[int]) -> int:
    """``torch.set_num_threads(n)`` when ``n`` (``run.num_threads``) is set; returns the count in effect."""
    if n is not None:
        if int(n) < 1:
            raise ConfigError(f"run.num_threads must be >= 1 (or null for torch's default), got {n}")
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def run_dir_for(run: DictConfig, resume_dir: Optional[Path]) -> Path:
    """The run directory: the resumed checkpoint's parent, else ``<run.output_dir>/<run.run_name>``.

    A new run into an existing non-empty directory raises :class:`RunDirError` unless
    ``run.overwrite`` (which the caller then honours by emptying it).
    """
    if resume_dir is not None:
        d = Path(resume_dir).parent
        named = Path(run.output_dir) / run.run_name
        if d.resolve() != named.resolve():
            log.info("resuming in %s (not run.output_dir/run.run_name = %s)", d, named)
        return d
    if not str(run.run_name).strip() or str(run.run_name).strip() in (".", ".."):
        raise ConfigError(f"run.run_name must name a directory under run.output_dir, got {run.run_name!r}")
    d = Path(run.output_dir) / run.run_name
    if d.is_dir() and not run.overwrite:
        entries = sorted(p.name for p in d.iterdir())
        if entries:
            raise RunDirError(
                f"run directory {d} already holds files ({', '.join(entries[:4])}{', ...' if len(entries) > 4 else ''}): "
                f"continue that run with --resume {d}, start a new one under another name "
                f"(--options run.run_name=NAME), or empty it first with --overwrite (run.overwrite=true)")
    elif d.exists() and not d.is_dir():
        raise RunDirError(f"run directory {d} exists and is not a directory")
    return d


def empty_dir(d: Path) -> None:
    """Delete everything inside ``d`` (``run.overwrite``), keeping ``d`` itself."""
    import shutil

    if not d.is_dir():
        return
    for p in d.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    log.info("run.overwrite: emptied %s", d)


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("run.device=cuda but CUDA is not available (use run.device=cpu or auto)")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ConfigError(f"run.device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None = no autocast). fp16 on CPU falls back to fp32 with a warning: CPU
    autocast in fp16 is of no use, and bf16 is 20-30x slower than fp32 on CPUs without native bf16
    (measured in benchmarks/results.md); ask for run.amp=bf16 explicitly where it pays."""
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type == "cpu":
            log.warning("run.amp=fp16 is not useful on CPU; training in fp32 (set run.amp=bf16 for bf16 autocast)")
            return None
        return torch.float16
    raise ConfigError(f"run.amp must be none, bf16 or fp16, got {amp!r}")


def env_info() -> Dict[str, Any]:
    """Versions of the main packages and the git commit of this checkout (if it is one)."""
    import importlib.metadata as md

    info: Dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "transformers", "peft", "numpy", "omegaconf", "safetensors", "llmva-gebc"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    info["cuda"] = torch.version.cuda
    info["torch_num_threads"] = torch.get_num_threads()
    info["omp_num_threads_env"] = os.environ.get("OMP_NUM_THREADS")
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        info["git_commit"] = commit.stdout.strip() if commit.returncode == 0 else None
        info["git_dirty"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"], info["git_dirty"] = None, None
    return info


def _call_builder(builder: Callable, ds_cfg, split: str, training: bool, extra: Dict[str, Any]):
    """Pass the optional model-derived checks only to builders that accept them."""
    params = inspect.signature(builder).parameters
    kw = {k: v for k, v in extra.items() if k in params}
    return builder(ds_cfg, split, training=training, **kw)


def build_split(cfg: DictConfig, split: str, training: bool, required: bool):
    """The ``split`` datasets of every ``cfg.datasets`` entry (concatenated); None when there are none."""
    from llmva_gebc.config import as_plain

    parts, names, ratios = [], [], []
    for name, ds_cfg in cfg.datasets.items():
        anns = ds_cfg.annotations
        if anns and split not in anns:
            if required:
                raise ConfigError(f"datasets.{name}.annotations has no '{split}' split (run.train_splits)")
            continue
        extra = {"name": name, "expected_hidden": cfg.model.adapter.hidden_size,
                 "expected_queries": cfg.model.encoder.num_query_tokens,
                 "max_frames": cfg.model.adapter.max_frame_pos,
                 "expected_other_feats": as_plain(cfg.model.adapter.other_feats)}
        parts.append(_call_builder(DATASETS.get(ds_cfg.builder), ds_cfg, split, training, extra))
        names.append(name)
        ratios.append(ds_cfg.sample_ratio)
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    if training and any(r is not None for r in ratios):
        from llmva_gebc.data.samplers import MixedDataset

        return MixedDataset(parts, names, [1.0 if r is None else r for r in ratios])
    return torch.utils.data.ConcatDataset(parts)


def _evaluator():
    """(generate_predictions, score_captions, submission module) when the eval code is installed."""
    try:
        from llmva_gebc.engine.evaluator import generate_predictions
        from llmva_gebc.eval import submission
        from llmva_gebc.eval.metrics import score_captions
    except ImportError:
        return None
    return generate_predictions, score_captions, submission


class MetricKeyError(KeyError, ConfigError):
    """``run.best_metric`` names no metric of this validation (e.g. SPICE without its jars)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def agg_metric(metrics: Dict[str, Any], key: str) -> float:
    """``agg_metrics`` = CIDEr + ROUGE_L (+ SPICE when computed), as the original sums its metrics;
    any other key is read from the metrics dict."""
    if key == "agg_metrics":
        return float(sum(metrics[k] for k in ("CIDEr", "ROUGE_L", "SPICE") if metrics.get(k) is not None))
    if metrics.get(key) is None:
        raise MetricKeyError(f"run.best_metric={key!r} is not among the validation metrics "
                          f"{sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))} (SPICE and score "
                          "need the SPICE jars); resume with another run.best_metric")
    return float(metrics[key])


def _boundary_ids(batch: Dict[str, Any]) -> List[str]:
    ids = batch.get("boundary_id") or []
    types = batch.get("type") or [None] * len(ids)
    return [f"{b}/{t}" if t else str(b) for b, t in zip(ids, types)]


class _EvalShard(torch.utils.data.Sampler):
    """Rank ``r``'s batches of ``range(n)`` (``r::world``), padded with weight-0 repeats so every rank
    runs the same number of batches (FSDP needs lockstep forwards). Yields lists of indices."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int) -> None:
        mine = list(range(rank, n, world))
        self.batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
        n_max = -(-(-(-n // world)) // batch_size)
        self.real = [len(b) for b in self.batches] + [0] * (n_max - len(self.batches))
        while len(self.batches) < n_max:
            self.batches.append([0])

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


# ------------------------------------------------------------------------------------ the runner
@RUNNERS.register("runner_base")
class Runner:
    """One training run. ``model``/``datasets``/``collate_fn`` may be injected (tests); otherwise
    they come from ``build_model(cfg.model)``, the ``DATASETS`` registry and ``collate_gebc``."""

    def __init__(self, cfg: DictConfig, *, model: Optional[torch.nn.Module] = None,
                 datasets: Optional[Dict[str, Any]] = None, collate_fn: Optional[Callable] = None) -> None:
        self.cfg = cfg
        self.run = cfg.run
        self._model = model
        self._datasets = datasets
        self.collate_fn = collate_fn

    # -------------------------------------------------------------- setup
    def _setup(self) -> None:
        run = self.run
        self.rank, self.local_rank, self.world = dist.init_distributed(run.distributed.backend,
                                                                       run.distributed.timeout_s)
        self.device = resolve_device(run.device, self.local_rank)
        self.amp_dtype = resolve_amp(run.amp, self.device)
        if run.nan_policy not in ("stop", "skip"):
            raise ConfigError(f"run.nan_policy must be stop or skip, got {run.nan_policy!r}")
        from llmva_gebc.eval.metrics import check_heap, spice_mode

        try:
            spice_mode(run.spice)
            check_heap(run.spice_heap)
        except ValueError as e:
            raise ConfigError(str(e) if str(e).startswith("run.") else f"run.{e}") from None
        if run.accum_grad_iters < 1:
            raise ConfigError(f"run.accum_grad_iters must be >= 1, got {run.accum_grad_iters}")
        self.num_threads = set_num_threads(run.num_threads)
        self.main = dist.is_main_process()
        # --resume DIR continues in DIR's run directory; a new run never reuses a non-empty one by accident.
        self.resume_dir = ckpt.find_resume_dir(run.resume)
        self.run_dir = run_dir_for(run, self.resume_dir)
        saved_cfg = self.run_dir / "config.yaml"
        self._saved_cfg = OmegaConf.load(saved_cfg) if self.resume_dir is not None and saved_cfg.is_file() else None
        changed = self._check_resume_config(saved_cfg)
        dist.barrier()  # every rank has looked at the directory before rank 0 writes into it
        if self.main:
            if self.resume_dir is None and run.overwrite:
                empty_dir(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            check_writable_dir(self.run_dir, "run directory")  # before any work, not at the first save
            remove_stale_temporaries(self.run_dir)  # of saves interrupted by a kill
            if changed:  # the run's first config is kept beside the one it continues with
                k = 1 + sum(1 for _ in self.run_dir.glob("config.before_resume*.yaml"))
                os.replace(saved_cfg, self.run_dir / f"config.before_resume{'' if k == 1 else k}.yaml")
            save_config(self.cfg, self.run_dir / "config.yaml")
            (self.run_dir / "env.json").write_text(json.dumps(env_info(), indent=1) + "\n")
            log.info("torch threads: %d%s", self.num_threads, "" if run.num_threads else
                     " (torch's default; on a CPU shared with other work, run.num_threads=1 can be much faster)")
        dist.barrier()
        self.tb = None
        if run.tensorboard and self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("run.tensorboard=true needs the tensorboard package: "
                                   "pip install 'llmva-gebc[tensorboard]' (or set run.tensorboard=false)") from e
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))

        # Model: identical initial weights on every rank (seed without rank), then per-rank seeds.
        seed_everything(run.seed)
        if self._model is None:
            from llmva_gebc.models import build_model

            self._model = build_model(self.cfg.model)
        model = self._model.to(self.device)
        for name, p in model.trainable_parameters():
            if p.dtype != torch.float32:
                raise TypeError(f"trainable parameter {name} is {p.dtype}; trainable weights must stay fp32")
        self.resume_state: Optional[Dict[str, Any]] = None
        if self.resume_dir is not None:
            weights, self.resume_state, d = ckpt.load_checkpoint(self.resume_dir)
            try:
                model.load_trainable_state_dict(weights, strict=True)
            except (KeyError, ValueError) as e:
                diff = config_diff(self._saved_cfg, self.cfg) if self._saved_cfg is not None else []
                raise CheckpointMismatchError(
                    f"run.resume: {d / ckpt.MODEL_FILE} does not fit this model"
                    + (f" (its run's config differs: {'; '.join(diff)})" if diff else f" (another config?): {one_line(e)}")) from e
            log.info("resuming from %s (epoch %d, global step %d)", d, self.resume_state["epoch"],
                     self.resume_state["global_step"])
        seed_everything(run.seed + self.rank)

        # Data.
        if self._datasets is None:
            self._datasets = {
                "train": build_split(self.cfg, run.train_splits[0], True, True) if len(run.train_splits) == 1
                else torch.utils.data.ConcatDataset([build_split(self.cfg, s, True, True) for s in run.train_splits]),
                "val": build_split(self.cfg, run.valid_splits[0], False, False) if run.valid_splits else None,
                "test": build_split(self.cfg, run.test_splits[0], False, False) if run.test_splits else None,
            }
        for split_key, key, splits in (("train", "run.train_splits", run.train_splits),
                                       ("val", "run.valid_splits", run.valid_splits)):
            parts = getattr(self._datasets.get(split_key), "datasets", None) or [self._datasets.get(split_key)]
            bare = [str(getattr(d, "split", "?")) for d in parts if getattr(d, "has_captions", True) is False]
            if bare:  # was a ValueError traceback at the first batch
                raise ConfigError(f"{key}={list(splits)}: split {bare[0]!r} has no reference captions (a test split); "
                                  "it cannot be trained or validated on")
        for split_key, splits in (("val", run.valid_splits), ("test", run.test_splits)):
            ds = self._datasets.get(split_key)
            if ds is not None and splits and len(ds) == 0:  # else: metrics of nothing, a submission of empty captions
                from llmva_gebc.engine.evaluator import check_not_empty

                check_not_empty(ds, splits[0], "<name>")
        train_ds = self._datasets["train"]
        if self.collate_fn is None:
            self.collate_fn = collate_for(train_ds)
        from llmva_gebc.engine.accel import apply_run_options

        apply_run_options(model, run)  # share_prefix(+_attention), gradient_checkpointing, compile
        ratios = getattr(train_ds, "sample_ratios", None)
        if ratios is not None and getattr(model, "share_prefix", False):
            raise ConfigError("run.share_prefix cannot be combined with datasets.<name>.sample_ratio "
                             f"(set for {getattr(train_ds, 'names', '?')}); unset one of them")
        if ratios is not None:
            # One dataset per batch, in proportion to the ratios (Video-LLaMA's sample_ratio).
            from llmva_gebc.data.samplers import MixtureBatchSampler

            self.sampler = MixtureBatchSampler(train_ds.sizes, ratios, run.batch_size_train, self.rank, self.world,
                                               seed=run.seed)
            log.info("mixing %s per batch with ratios %s: %s batches per epoch", train_ds.names, ratios,
                     self.sampler.batch_quotas)
        elif getattr(model, "share_prefix", False):
            # A boundary's three caption types stay in one batch so the shared prefix runs once.
            from llmva_gebc.data.samplers import BoundaryBatchSampler, boundary_groups

            self.sampler = BoundaryBatchSampler(boundary_groups(train_ds), run.batch_size_train, self.rank,
                                                self.world, seed=run.seed, shuffle=True)
        else:
            self.sampler = dist.EpochBatchSampler(len(train_ds), run.batch_size_train, self.rank, self.world,
                                                  seed=run.seed, shuffle=True)
        self.loader = torch.utils.data.DataLoader(
            dist.SeededDataset(train_ds), batch_sampler=self.sampler, collate_fn=self.collate_fn,
            num_workers=run.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(run.seed),  # never touch the global RNG
            persistent_workers=False)

        # Wrapping, optimiser, schedule.
        self.model = dist.wrap_model(model, run.distributed.strategy, self.device)
        inner = dist.unwrap(self.model)
        self.optimizer = build_optimizer(inner.trainable_parameters(), run.init_lr, run.weight_decay, run.betas,
                                         fused=run.fused_adamw)
        self.batches_per_epoch = self.sampler.batches_per_epoch
        self.steps_per_epoch = -(-self.batches_per_epoch // run.accum_grad_iters)
        self.total_steps = run.max_steps if run.max_steps is not None else run.max_epoch * self.steps_per_epoch
        self.scheduler = build_scheduler(run.lr_sched, self.optimizer, total_steps=self.total_steps,
                                         steps_per_epoch=self.steps_per_epoch, **schedule_kwargs(run))
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

        # Counters. samples_in_epoch: samples of this epoch's order consumed by all ranks together (the
        # resume position; see EpochBatchSampler); batch_in_epoch: batches of it at the current batch size.
        self.epoch, self.batch_in_epoch, self.samples_in_epoch, self.global_step = 0, 0, 0, 0
        self._epoch_loss_sum, self._epoch_steps = 0.0, 0  # this rank's optimizer-step losses of the epoch
        self.epoch_finished = False
        # An epoch whose training is done and saved in checkpoint_last but whose validation and epoch
        # record are not: {"epoch", "loss_sum", "steps"} (resuming runs that validation first).
        self.pending: Optional[Dict[str, Any]] = None
        self.best_value: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.skipped_steps = 0
        self.higher_is_better = True

    def _check_resume_config(self, saved_path: Path) -> bool:
        """On resume, compare this config with the run's own ``config.yaml``: a different model (another
        LLM, dropout, encoder, ...) is refused before anything is written, since its weights would be
        trained on as if nothing changed; other differences (``run.*``, ``datasets.*``) are listed in a
        warning. Returns whether anything differs."""
        if self._saved_cfg is None:
            return False
        model = [d for d in config_diff(self._saved_cfg, self.cfg, "model", limit=10**6)
                 if not d.startswith(WEIGHT_NEUTRAL_MODEL_KEYS)]
        if model:
            raise ConfigError(f"run.resume: this config's model differs from the run's own ({saved_path}): "
                              f"{'; '.join(model[:6])}{' ...' if len(model) > 6 else ''}; resume with that config "
                              "(--cfg-path it; if only a path moved, edit it there) or start a new run")
        other = [d for sec in ("model", "datasets", "run") for d in config_diff(self._saved_cfg, self.cfg, sec, limit=10**6)
                 if d.split(":")[0] not in ("run.resume", "run.overwrite")]
        if other and self.main:
            log.warning("run.resume: continuing with a config that differs from the run's own (%s, kept as "
                        "config.before_resume*.yaml): %s", saved_path, "; ".join(other[:8]) + (" ..." if len(other) > 8 else ""))
            sched = sorted({d.split(":")[0] for d in other if d.split(":")[0] in self.SCHEDULE_KEYS})
            if sched:
                log.warning("run.resume: %s changed: the learning-rate schedule is recomputed for the new settings "
                            "(the global step is kept), so the learning rate can jump at the resume point instead "
                            "of continuing the run's own curve", ", ".join(sched))
        return bool(other)

    # run.* keys that define the learning-rate schedule (its length, shape or values)
    SCHEDULE_KEYS = ("run.max_epoch", "run.max_steps", "run.warmup_steps", "run.lr_sched", "run.init_lr",
                     "run.min_lr", "run.warmup_lr", "run.lr_decay_rate", "run.batch_size_train",
                     "run.accum_grad_iters")

    def _restore(self) -> None:
        st = self.resume_state
        if st is None:
            return
        dist.load_optimizer_state_dict(self.model, self.optimizer, st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        if st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.epoch, self.batch_in_epoch = int(st["epoch"]), int(st["batch_in_epoch"])
        self.global_step, self.skipped_steps = int(st["global_step"]), int(st["skipped_steps"])
        self.best_value = st.get("best_value")
        self.best_epoch = st.get("best_epoch")
        old_world = int(st["world_size"])
        old_batch = int(st.get("batch_size_train", self.run.batch_size_train))
        # checkpoints written before positions counted samples: batches of the same batch size
        self.samples_in_epoch = int(st.get("samples_in_epoch", self.batch_in_epoch * old_batch * old_world))
        self._epoch_loss_sum, self._epoch_steps = (float(st["epoch_loss"][0]), int(st["epoch_loss"][1])) \
            if "epoch_loss" in st else (0.0, 0)
        self.pending = st.get("pending_validation")
        self._remap_position(old_batch, old_world)
        rng = st["rng"]
        if old_world == self.world:
            ckpt.set_rng_state(rng[self.rank])
        else:
            log.warning("resuming with %d processes from a %d-process checkpoint: RNG streams re-seeded, "
                        "the run will not be bit-identical", self.world, old_world)
        if self.main:
            self._truncate_metrics(self.global_step)

    def _remap_position(self, old_batch: int, old_world: int) -> None:
        """Continue epoch ``self.epoch`` after ``samples_in_epoch`` samples with the current batch size
        and world size (exact, see EpochBatchSampler), or refuse where that is not possible."""
        new_batch, new_world = int(self.run.batch_size_train), self.world
        if (old_batch, old_world) == (new_batch, new_world):
            return
        fixed = []  # what this sampler cannot re-map in the middle of an epoch
        if new_world != old_world and not getattr(self.sampler, "exact_world_remap", True):
            fixed.append(f"{old_world} processes")
        if new_batch != old_batch and not getattr(self.sampler, "exact_batch_remap", True):
            fixed.append(f"run.batch_size_train={old_batch}")
        if self.samples_in_epoch and fixed:
            raise UserError(
                f"run.resume: the checkpoint was written mid-epoch (epoch {self.epoch}, after {self.samples_in_epoch} "
                f"samples) with batch size {old_batch} x {old_world} processes; with "
                f"{type(self.sampler).__name__} (run.share_prefix or datasets.*.sample_ratio) the rest of that epoch "
                f"cannot be re-mapped exactly to {new_batch} x {new_world}. Resume with {' and '.join(fixed)}, or "
                "from a checkpoint written at the end of an epoch")
        self.sampler.set_epoch(self.epoch, start_sample=self.samples_in_epoch)
        left = len(self.sampler)
        self.batch_in_epoch = self.batches_per_epoch - left
        epochs_after = max(int(self.run.max_epoch) - self.epoch - 1, 0)
        if self.run.max_steps is None:  # the schedule ends where the re-batched run ends
            self.total_steps = self.global_step + -(-left // self.run.accum_grad_iters) \
                + epochs_after * self.steps_per_epoch
            if hasattr(self.scheduler, "total_steps"):
                self.scheduler.total_steps = self.total_steps
        if self.main:
            log.warning(
                "resuming with batch size %d x %d processes from a checkpoint written with %d x %d: epoch %d "
                "continues after its first %d samples with %d batches of %d (no sample skipped or repeated); "
                "the schedule now ends at step %d; the run will not be bit-identical to an uninterrupted one",
                new_batch, new_world, old_batch, old_world, self.epoch, self.samples_in_epoch, left,
                new_batch * new_world, self.total_steps)

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines past the resumed step (written by the interrupted run after its checkpoint),
        the epoch record of a validation that is to be rerun, and a partial line (a kill during a write),
        with a warning naming the file and line."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        lines = path.read_text(errors="replace").splitlines()
        pending = self.pending["epoch"] if self.pending else None
        for n, ln in enumerate(lines, 1):
            if not ln.strip():
                continue
            try:
                rec = json.loads(ln)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                where = "its last line" if n == len(lines) else f"line {n} of {len(lines)}"
                log.warning("%s: %s is not valid JSON (%s; left by an interrupted write?); dropped: %.80r",
                            path, where, e, ln)
                continue
            if rec.get("step", 0) > step or (rec.get("type") == "epoch" and rec.get("epoch") == pending):
                continue
            keep.append(ln)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in keep))
        os.replace(tmp, path)

    # -------------------------------------------------------------- logging
    def _log(self, record: Dict[str, Any]) -> None:
        if not self.main:
            return
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise write_error(path, e, "append to") from e
        if self.tb is not None:
            kind = record.get("type", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{kind}/{k}", v, record.get("step", 0))

    # -------------------------------------------------------------- checkpoints
    def _state(self) -> Dict[str, Any]:
        """Collective (RNG gather; FSDP optimizer gather): every rank calls it."""
        return {
            "optimizer": dist.optimizer_state_dict(self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step,
            "samples_in_epoch": self.samples_in_epoch, "batch_size_train": int(self.run.batch_size_train),
            "epoch_loss": [self._epoch_loss_sum, self._epoch_steps], "pending_validation": self.pending,
            "best_value": self.best_value, "best_epoch": self.best_epoch, "skipped_steps": self.skipped_steps,
            "world_size": self.world, "rng": dist.all_gather_object(ckpt.get_rng_state()),
        }

    def _save(self, name: str, state: Optional[Dict[str, Any]] = None) -> None:
        weights = dist.full_trainable_state_dict(self.model)
        state = state if state is not None else self._state()
        if self.main:
            ckpt.save_checkpoint(self.run_dir / name, weights, state)
        dist.barrier()

    # -------------------------------------------------------------- one training step
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _check_finite(self, loss: torch.Tensor, batch: Dict[str, Any], b_idx: int) -> bool:
        """True when every rank's loss is finite; with ``nan_policy=stop`` raise otherwise."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if not dist.any_true(not finite):
            return True
        reports = dist.all_gather_object(None if finite else (float(loss.detach()), _boundary_ids(batch)))
        where = "; ".join(f"rank {r}: loss={rep[0]} boundary ids {rep[1]}" for r, rep in enumerate(reports) if rep)
        msg = (f"non-finite training loss at global step {self.global_step} (epoch {self.epoch}, batch "
               f"{b_idx} of the epoch): {where}")
        if self.run.nan_policy == "stop":
            raise NonFiniteLossError(msg + ". Set run.nan_policy=skip to skip such steps.")
        if self.main:
            log.warning("%s; skipping this optimizer step", msg)
        return False

    def _train_epoch(self, bar) -> bool:
        """Returns True when run.max_steps was reached."""
        run, accum = self.run, self.run.accum_grad_iters
        self.model.train()
        self.sampler.set_epoch(self.epoch, start_sample=self.samples_in_epoch)
        n_left = len(self.sampler)  # batches left in this epoch (all of it unless resuming mid-epoch)
        self.epoch_finished = n_left == 0
        window_losses: List[float] = []
        window_ok = True
        t_last, samples_since = time.perf_counter(), 0
        for j, batch in enumerate(self.loader):
            b_idx = self.batch_in_epoch
            # a resume position is always at an optimizer step: accumulation windows restart there
            last_micro = (j + 1) % accum == 0 or j + 1 == n_left
            batch = to_device(batch, self.device)
            with dist.no_grad_sync(self.model, enabled=not last_micro):
                with self._autocast():
                    loss = self.model(batch)["loss"]  # scalar
                ok = self._check_finite(loss, batch, b_idx)
                window_ok = window_ok and ok
                # a skipped micro-batch still runs backward (x0) so DDP/FSDP collectives stay in step
                scaled = loss / accum if ok else loss.nan_to_num(0.0, 0.0, 0.0) * 0.0
                with dist.collective("gradient all-reduce/reduce-scatter (backward)"):
                    self.scaler.scale(scaled).backward()
            window_losses.append(float(loss.detach()) if ok else float("nan"))
            samples_since += len(batch.get("boundary_id") or []) or run.batch_size_train
            self.batch_in_epoch = b_idx + 1
            self.samples_in_epoch += self.sampler.samples_per_batch
            self.epoch_finished = j + 1 == n_left
            if not last_micro:
                continue

            if not window_ok:
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1
                self._log({"type": "skipped", "step": self.global_step, "epoch": self.epoch, "batch": b_idx})
            else:
                lr = self.scheduler.step(self.global_step, self.epoch)
                if run.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_([p for _, p in dist.unwrap(self.model).trainable_parameters()],
                                                   run.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                step_loss = float(np.mean(window_losses))
                self._epoch_loss_sum += step_loss
                self._epoch_steps += 1
                if self.global_step % run.log_every == 0 or self.global_step == self.total_steps:
                    mean_loss = float(dist.all_reduce_mean(torch.tensor(step_loss, dtype=torch.float64)))
                    now = time.perf_counter()
                    sps = samples_since * self.world / max(now - t_last, 1e-9)
                    t_last, samples_since = now, 0
                    self._log({"type": "train", "step": self.global_step, "epoch": self.epoch, "loss": mean_loss,
                               "lr": lr, "samples_per_s": sps})
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", sps=f"{sps:.1f}")
                    elif self.main and now - self._last_line >= PLAIN_LOG_SECONDS:  # no terminal: a line now and then
                        self._last_line = now
                        log.info("step %d/%d (epoch %d): loss %.4f, lr %.2e, %.1f samples/s", self.global_step,
                                 self.total_steps, self.epoch, mean_loss, lr, sps)
                if bar is not None:
                    bar.update(1)
            stepped, window_losses, window_ok = window_ok, [], True
            if stepped and run.save_every_steps and self.global_step % run.save_every_steps == 0 \
                    and not self.epoch_finished:  # epoch ends save in train()
                self._save("checkpoint_last")
            if run.max_steps is not None and self.global_step >= run.max_steps:
                return True
        return False

    # -------------------------------------------------------------- validation / prediction
    @torch.no_grad()
    def _val_loss(self, dataset) -> float:
        self.model.eval()
        shard = _EvalShard(len(dataset), self.run.batch_size_eval, self.rank, self.world)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=shard, collate_fn=self.collate_fn,
                                             num_workers=self.run.num_workers)
        fwd = self.model if dist.is_fsdp(self.model) else dist.unwrap(self.model)
        total = torch.zeros(2, dtype=torch.float64)
        for real, batch in zip(shard.real, loader):
            with self._autocast():
                loss = fwd(to_device(batch, self.device))["loss"]
            total += torch.tensor([float(loss) * real, real], dtype=torch.float64)
        total = dist.all_reduce_sum(total)
        return float(total[0] / max(total[1], 1))

    @torch.no_grad()
    def _predict(self, dataset, desc: str) -> List[Dict[str, Any]]:
        """Prediction records of ``dataset`` on every rank. DDP: each rank generates its share and the
        records are gathered; FSDP: every rank generates everything in lockstep (sharded weights)."""
        generate_predictions = _evaluator()[0]
        self.model.eval()
        if dist.is_fsdp(self.model) or self.world == 1:
            return list(generate_predictions(self.model, dataset, self.run.batch_size_eval, self.collate_fn,
                                             self.main, desc=desc))
        return list(generate_predictions(dist.unwrap(self.model), dataset, self.run.batch_size_eval,
                                         self.collate_fn, self.main, distributed=True, desc=desc))

    def _will_validate(self) -> bool:
        return self._datasets.get("val") is not None and bool(self.run.evaluate_each_epoch)

    def _validate(self) -> Dict[str, Any]:
        ds = self._datasets.get("val")
        if not self._will_validate():
            return {}
        ds = _first_boundaries(ds, self.run.max_eval_boundaries)
        out: Dict[str, Any] = {"val_loss": self._val_loss(ds)}
        ev = _evaluator()
        refs = _references(ds) if ev is not None else None
        if ev is not None and refs:
            _, score_captions, submission = ev
            records = self._predict(ds, "val")
            metrics, failure, error = None, None, None
            if self.main:
                epoch = self.pending["epoch"] if self.pending else self.epoch
                sub = submission.build_submission(records, list(refs))
                try:  # the predictions are kept whatever the scorer does
                    submission.write_json(sub, self.run_dir / f"val_predictions_epoch{epoch}.json")
                    metrics = score_captions(sub, refs, spice=self.run.spice, spice_heap=self.run.spice_heap)
                except Exception as e:  # every rank must learn of it, not wait in the broadcast
                    failure, error = f"{type(e).__name__}: {e}", e
            metrics, failure = dist.broadcast_object((metrics, failure))
            if failure is not None:
                if error is not None:
                    raise error
                raise RuntimeError(f"validation scoring failed on rank 0: {failure}")
            out.update(metrics)
            out["agg_metrics"] = agg_metric(out, "agg_metrics")
        return out

    def _is_better(self, val: Dict[str, Any]) -> Optional[float]:
        key = self.run.best_metric
        if not val:
            return None
        uses_cider = key in ("agg_metrics", "CIDEr", "score", "score_without_spice")
        too_few = "agg_metrics" in val and uses_cider and not val.get("cider_reliable", True)
        if too_few and self.main and not getattr(self, "_warned_few", False):
            self._warned_few = True
            log.warning("run.best_metric=%s: validation scores only %s boundaries, too few for CIDEr to mean "
                        "anything; the best checkpoint is selected by val_loss instead (raise "
                        "run.max_eval_boundaries)", key, val.get("num_boundaries"))
        if key == "val_loss" or "agg_metrics" not in val or too_few:  # loss only: no evaluator, or too few
            value, higher = val["val_loss"], False
        else:
            value, higher = agg_metric(val, key), True
        self.higher_is_better = higher
        if self.best_value is None or (value > self.best_value if higher else value < self.best_value):
            return value
        return None

    def _predict_test(self) -> Optional[Path]:
        ds = self._datasets.get("test")
        ev = _evaluator()
        if ds is None or ev is None:
            if ds is not None and self.main:
                log.warning("no evaluator installed (llmva_gebc.engine.evaluator): test predictions skipped")
            return None
        best = self.run_dir / "checkpoint_best"
        try:
            weights, _, d = ckpt.load_checkpoint(best)
            dist.load_full_trainable_state_dict(self.model, weights)
            log.info("test predictions from %s", d)
        except FileNotFoundError:
            log.warning("no checkpoint_best/: predicting the test split with the final weights")
        records = self._predict(ds, "test")
        path = None
        if self.main:
            ids = _all_boundary_ids(ds) or sorted({r["boundary_id"] for r in records})
            sub = ev[2].build_submission(records, ids)
            split = self.run.test_splits[0]
            path, _ = ev[2].write_submission(sub, self.run_dir, split)
        dist.barrier()
        return path

    # -------------------------------------------------------------- main loop
    def train(self) -> Path:
        self._setup()
        self._restore()
        run = self.run
        bar = None
        if self.main:
            if progress_enabled():  # a bar on a terminal; otherwise plain log lines (_train_epoch)
                from tqdm.auto import tqdm

                bar = tqdm(total=self.total_steps, initial=self.global_step, desc="train", dynamic_ncols=True)
            log.info("run dir %s: %d processes, %d batches/epoch, %d steps/epoch, %d steps total, %d torch threads",
                     self.run_dir, self.world, self.batches_per_epoch, self.steps_per_epoch, self.total_steps,
                     self.num_threads)
        t0 = time.perf_counter()
        self._last_line = t0 - PLAIN_LOG_SECONDS
        step0 = self.global_step
        done = run.max_steps is not None and self.global_step >= run.max_steps
        while self.pending is not None or (not done and self.epoch < run.max_epoch):
            if self.pending is None:
                done = self._train_epoch(bar)
                self.pending = {"epoch": self.epoch, "loss_sum": self._epoch_loss_sum, "steps": self._epoch_steps}
                if self.epoch_finished:
                    self.epoch, self.batch_in_epoch, self.samples_in_epoch = self.epoch + 1, 0, 0
                    self._epoch_loss_sum, self._epoch_steps = 0.0, 0
                if self._will_validate():  # nothing of the epoch's training is lost if validation fails
                    self._save("checkpoint_last")
            with _rng_preserved(self.device):  # validation must not shift the training RNG streams
                val = self._validate()
            better = self._is_better(val)
            pend, self.pending = self.pending, None
            record = {"type": "epoch", "step": self.global_step, "epoch": pend["epoch"],
                      "train_loss": pend["loss_sum"] / max(pend["steps"], 1), **val}
            if better is not None:
                self.best_value, self.best_epoch = better, pend["epoch"]
            record.update(best_metric=run.best_metric if self.higher_is_better else "val_loss",
                          best_value=self.best_value, best_epoch=self.best_epoch)
            self._log(record)
            if self.main:
                log.info("epoch %d: %s", pend["epoch"], {k: v for k, v in record.items() if k != "type"})
            state = self._state()
            if better is not None or not val:
                self._save("checkpoint_best", state)
            self._save("checkpoint_last", state)
            done = done or (run.max_steps is not None and self.global_step >= run.max_steps)
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        steps = self.global_step - step0
        summary = {"type": "summary", "step": self.global_step, "epoch": self.epoch, "steps": steps,
                   "seconds": elapsed, "steps_per_s": steps / max(elapsed, 1e-9),
                   "samples_per_s": steps * run.batch_size_train * run.accum_grad_iters * self.world / max(elapsed, 1e-9),
                   "skipped_steps": self.skipped_steps, "world_size": self.world}
        if self.skipped_steps and self.main:
            log.warning("%d optimizer steps were skipped for non-finite losses", self.skipped_steps)
        path = self._predict_test()
        if path is not None:
            summary["test_submission"] = str(path)
        self._log(summary)
        if self.tb is not None:
            self.tb.close()
        return self.run_dir


@contextlib.contextmanager
def _rng_preserved(device: torch.device):
    """Restore the python/numpy/torch(/CUDA) RNG states on exit (loaders and generation draw from them)."""
    py, npst = random.getstate(), np.random.get_state()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npst)


def _first_boundaries(ds, k: Optional[int]):
    """The samples of ``ds``'s first ``k`` boundaries (whole boundaries: all their caption types), or
    ``ds`` itself when ``k`` is None or covers it."""
    if k is None:
        return ds
    from llmva_gebc.data.samplers import boundary_groups

    if k < 1:
        raise ConfigError(f"run.max_eval_boundaries must be >= 1 (or null for all), got {k}")
    groups = boundary_groups(ds)
    if k >= len(groups):
        return ds
    return torch.utils.data.Subset(ds, [i for g in groups[:k] for i in g])


def _references(ds) -> Optional[Dict[str, Dict[str, str]]]:
    """Reference captions of a GEBC dataset (``.boundaries``), else None."""
    from llmva_gebc.eval.submission import references_from_boundaries

    base = ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds
    bounds = getattr(base, "boundaries", None)
    if bounds is None:
        return None
    if isinstance(ds, torch.utils.data.Subset):
        keep = {base.samples[i][0] for i in ds.indices}
        bounds = [b for j, b in enumerate(bounds) if j in keep]
    return references_from_boundaries(bounds)


def _all_boundary_ids(ds) -> Optional[List[str]]:
    bounds = getattr(ds, "boundaries", None)
    return [b["boundary_id"] for b in bounds] if bounds is not None else None


def train(cfg: DictConfig, **inject: Any) -> Path:
    """Run ``RUNNERS[cfg.run.runner]`` on ``cfg``; returns the run directory."""
    check_resolved(cfg)
    runner = RUNNERS.get(cfg.run.runner)(cfg, **inject)
    return runner.train()


__all__ = ["Runner", "train", "run_dir_for", "empty_dir", "set_num_threads", "NonFiniteLossError", "agg_metric", "env_info", "resolve_amp", "seed_everything"]
