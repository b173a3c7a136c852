"""Samplers that keep a boundary's samples (its three caption types) together.

Used with ``run.share_prefix: true``: the model encodes each boundary's common prefix once per batch,
so a boundary's samples must land in the same batch, while boundaries are still shuffled and sharded
across DDP ranks.

* :class:`BoundaryBatchSampler` (training): :class:`llmva_gebc.dist.EpochBatchSampler` with whole
  boundaries as the shuffled / padded / sharded unit. Epoch ``e``'s boundary order is
  ``randperm(num_boundaries)`` seeded with ``seed + e``; it is padded by wrapping around to a multiple
  of ``world_size`` boundaries, rank ``r`` takes boundaries ``r::world_size``, flattens them to samples
  (in dataset order inside a boundary) and cuts ``batch_size``-sample batches, dropping the last partial
  one. ``batches_per_epoch`` is the same on every rank and in every epoch. Elements are
  ``(index, sample_seed)`` for :class:`llmva_gebc.dist.SeededDataset`; ``set_epoch(e, start_sample=P)``
  resumes after ``P`` samples (all ranks together; each rank skips ``P / world_size`` of its own list),
  so a changed ``batch_size`` is re-mapped exactly. A changed ``world_size`` cannot be (each rank's list
  depends on it): ``exact_world_remap`` is False and the trainer refuses such a mid-epoch resume. With a ``batch_size`` that is a multiple of 3 every batch holds whole boundaries; otherwise
  the boundaries at batch edges are split (still correct, just less sharing).
* :class:`BoundaryShardSampler` (evaluation / generation): rank ``r`` gets boundaries ``r::world_size``,
  flattened to sample indices; no padding, so every sample is generated exactly once over all ranks.
* :func:`boundary_groups` reads the grouping from a dataset (``dataset.sample_boundary_index``, also
  through ``ConcatDataset`` / ``Subset``).

Mixing datasets with ``datasets.<name>.sample_ratio`` (stage-1 WebVid + CC3M):

* :class:`MixedDataset` is the ``ConcatDataset`` that ``build_split`` returns when a ratio is set; it
  carries the dataset names and their ratios.
* :class:`MixtureBatchSampler` draws **each batch** from one dataset, with probability proportional to
  its ratio (Video-LLaMA's meaning: its ``MultiIterLoader`` picks a dataset's loader per batch with
  ``random.choices(loaders, ratios)``). Unlike a fresh random draw per batch, the counts per epoch are
  exact: of the epoch's ``B`` batches, dataset ``k`` gets ``B * r_k / sum(r)`` (largest remainder
  rounding), in an order shuffled with ``seed + epoch``, the same on every rank. Dataset ``k``'s
  samples come from successive passes over it, pass ``p`` a ``randperm`` seeded by ``(seed, epoch, k,
  p)``, padded to a multiple of ``world_size`` and sharded ``rank::world_size``, so a small dataset is
  repeated and a large one only partly seen in an epoch. ``B`` is what plain concatenation gives
  (``ceil(sum(sizes) / world_size) // batch_size``), so an epoch has the same number of steps with or
  without ratios. Everything is a pure function of (seed, epoch), so ``set_epoch(e, start_batch=k)``
  resumes exactly.
"""
from __future__ import annotations

import logging
from typing import Iterator, List, Sequence, Tuple

import numpy as np

import torch

from llmva_gebc.dist import EpochBatchSampler, sample_seed

log = logging.getLogger(__name__)


def boundary_groups(dataset) -> List[List[int]]:
    """Sample indices of ``dataset`` grouped by boundary, in order of first appearance.

    Reads ``dataset.sample_boundary_index`` (GEBC); ``ConcatDataset`` parts are offset (boundaries of
    different parts never merge); ``Subset`` maps through its indices. A dataset without the attribute
    gives one group per sample (with a warning)."""
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        out: List[List[int]] = []
        start = 0
        for part, end in zip(dataset.datasets, dataset.cumulative_sizes):
            out += [[start + i for i in g] for g in boundary_groups(part)]
            start = end
        return out
    if isinstance(dataset, torch.utils.data.Subset):
        inner = boundary_groups(dataset.dataset)
        where = {i: k for k, g in enumerate(inner) for i in g}
        by: dict = {}
        for pos, i in enumerate(dataset.indices):
            by.setdefault(where[int(i)], []).append(pos)
        return list(by.values())
    inner = getattr(dataset, "dataset", None)  # SeededDataset and similar wrappers
    if not hasattr(dataset, "sample_boundary_index") and inner is not None and len(inner) == len(dataset):
        return boundary_groups(inner)
    index = getattr(dataset, "sample_boundary_index", None)
    if index is None:
        log.warning("%s has no 'sample_boundary_index'; every sample is its own boundary group",
                    type(dataset).__name__)
        return [[i] for i in range(len(dataset))]
    if len(index) != len(dataset):
        raise ValueError(f"{type(dataset).__name__}.sample_boundary_index has {len(index)} entries for "
                         f"{len(dataset)} samples")
    groups: dict = {}
    for i, b in enumerate(index):
        groups.setdefault(b, []).append(i)
    return list(groups.values())


class BoundaryBatchSampler(EpochBatchSampler):
    """:class:`EpochBatchSampler` over whole boundaries (see the module docstring)."""

    exact_world_remap = False

    def __init__(self, groups: Sequence[Sequence[int]], batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True) -> None:
        self.groups = [list(g) for g in groups]
        if not self.groups or any(len(g) == 0 for g in self.groups):
            raise ValueError("BoundaryBatchSampler needs a non-empty list of non-empty boundary groups")
        n = sum(len(g) for g in self.groups)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # Worst case over epochs and ranks: a rank gets the ceil(G/world) smallest boundaries.
        per_rank_groups = -(-len(self.groups) // world_size)
        min_samples = sum(sorted(len(g) for g in self.groups)[:per_rank_groups])
        if min_samples < batch_size:
            raise ValueError(
                f"the training set has {len(self.groups)} boundaries ({n} samples), too few for batch_size "
                f"({batch_size}) x world_size ({world_size}); lower run.batch_size_train")
        super().__init__(len(self.groups), 1, rank, world_size, seed, shuffle)  # group-level order
        self.num_samples, self.batch_size, self.min_samples = n, batch_size, min_samples
        self.batches_per_epoch = min_samples // batch_size
        if batch_size % 3 and {len(g) for g in self.groups} == {3}:
            log.warning("run.batch_size_train=%d is not a multiple of 3: boundaries at batch edges are split "
                        "(correct, but less prefix sharing)", batch_size)

    def _group_order(self) -> List[int]:
        """This rank's boundaries of the epoch (the whole epoch: resume offsets are per rank here)."""
        order = self._full_order()
        total = -(-len(order) // self.world_size) * self.world_size
        order = (order * (total // len(order) + 1))[:total]
        return order[self.rank::self.world_size]

    def _rank_offset(self) -> int:
        """Samples of this rank's list already consumed (``start_sample`` counts all ranks together)."""
        return self.start_sample // self.world_size

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        mine = [i for g in self._group_order() for i in self.groups[g]]  # this rank's samples, boundary by boundary
        k = self._rank_offset()
        for b in range(len(self)):
            idx = mine[k + b * self.batch_size:k + (b + 1) * self.batch_size]
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in idx]

    def __len__(self) -> int:
        return max(self.min_samples - self._rank_offset(), 0) // self.batch_size


class BoundaryShardSampler(torch.utils.data.Sampler):
    """Sample indices of boundaries ``rank::world_size`` (no padding: each sample once over all ranks).

    Use as ``DataLoader(..., sampler=BoundaryShardSampler(boundary_groups(ds), rank, world))``; with
    ``batch_size`` a multiple of 3 the batches hold whole boundaries."""

    def __init__(self, groups: Sequence[Sequence[int]], rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.indices = [i for g in list(groups)[rank::world_size] for i in g]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class MixedDataset(torch.utils.data.ConcatDataset):
    """``ConcatDataset`` of named datasets with per-dataset draw ratios (``datasets.<name>.sample_ratio``)."""

    def __init__(self, datasets: Sequence, names: Sequence[str], ratios: Sequence[float]) -> None:
        super().__init__(list(datasets))
        if not (len(names) == len(ratios) == len(self.datasets)):
            raise ValueError(f"MixedDataset: {len(self.datasets)} datasets, {len(names)} names, {len(ratios)} ratios")
        for n, r in zip(names, ratios):
            if not (isinstance(r, (int, float)) and np.isfinite(r) and r > 0):
                raise ValueError(f"datasets.{n}.sample_ratio must be a positive number, got {r!r}")
        self.names, self.sample_ratios = list(names), [float(r) for r in ratios]

    @property
    def sizes(self) -> List[int]:
        return [len(d) for d in self.datasets]


def quotas(total: int, ratios: Sequence[float]) -> List[int]:
    """``total`` split in proportion to ``ratios`` (largest remainder; ties to the earlier dataset)."""
    r = np.asarray(ratios, dtype=np.float64)
    exact = total * r / r.sum()
    out = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - out), kind="stable")[: total - int(out.sum())]:
        out[k] += 1
    return out.tolist()


def _gen(*parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


class MixtureBatchSampler(EpochBatchSampler):
    """One dataset per batch, drawn in proportion to ``ratios`` (see the module docstring).

    ``sizes``: samples per dataset, in :class:`MixedDataset` order (global index = offset + local).
    Yields lists of ``(global index, sample_seed)``; ``dataset_order()`` gives the epoch's dataset
    index per batch. Raises ValueError for a bad ratio, an empty dataset or too few samples.

    Resume positions (``set_epoch(e, start_sample=P)``) must fall on a batch of the current batch size
    and world size: an epoch's dataset order depends on both, so neither can change mid-epoch
    (``exact_batch_remap`` / ``exact_world_remap`` are False; the trainer refuses such a resume)."""

    exact_world_remap = False
    exact_batch_remap = False

    def __init__(self, sizes: Sequence[int], ratios: Sequence[float], batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0) -> None:
        if len(sizes) != len(ratios) or not sizes:
            raise ValueError(f"MixtureBatchSampler: {len(sizes)} dataset sizes for {len(ratios)} ratios")
        if any(n < 1 for n in sizes):
            raise ValueError(f"MixtureBatchSampler: every dataset needs samples, got sizes {list(sizes)}")
        if any(not (float(r) > 0) for r in ratios):
            raise ValueError(f"sample ratios must be positive, got {list(ratios)}")
        super().__init__(int(sum(sizes)), batch_size, rank, world_size, seed, shuffle=True)
        self.sizes, self.ratios = [int(n) for n in sizes], [float(r) for r in ratios]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(int).tolist()
        self.batch_quotas = quotas(self.batches_per_epoch, self.ratios)

    @property
    def start_batch(self) -> int:
        """Batches of the epoch already consumed (``start_sample`` counts samples over all ranks)."""
        return self.start_sample // self.samples_per_batch

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start_batch, 0)

    def dataset_order(self) -> List[int]:
        """The dataset of each batch of the current epoch (identical on every rank)."""
        seq = torch.tensor([k for k, q in enumerate(self.batch_quotas) for _ in range(q)], dtype=torch.long)
        perm = torch.randperm(len(seq), generator=_gen(self.seed, self.epoch, 1))
        return seq[perm].tolist()

    def _stream(self, k: int, need: int) -> List[Tuple[int, int]]:
        """This rank's first ``need`` (local index, pass) draws of dataset ``k`` in this epoch."""
        n, out, p = self.sizes[k], [], 0
        total = -(-n // self.world_size) * self.world_size
        while len(out) < need:
            order = torch.randperm(n, generator=_gen(self.seed, self.epoch, 2, k, p)).tolist()
            order = (order * (total // n + 1))[:total]
            out += [(i, p) for i in order[self.rank::self.world_size]]
            p += 1
        return out[:need]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        order = self.dataset_order()
        streams = {k: iter(self._stream(k, self.batch_size * order.count(k))) for k in set(order)}
        start = self.start_batch
        for b, k in enumerate(order):
            batch = [next(streams[k]) for _ in range(self.batch_size)]
            if b < start:
                continue  # resume: consumed batches are skipped without loading data
            # pass p of a repeated dataset gets its own per-sample seed
            yield [(self.offsets[k] + i, sample_seed(self.seed, self.epoch, (self.offsets[k] + i) + p * self.n))
                   for i, p in batch]


__all__ = ["boundary_groups", "BoundaryBatchSampler", "BoundaryShardSampler", "MixedDataset", "MixtureBatchSampler",
           "quotas"]
