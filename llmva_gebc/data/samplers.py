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
  ``(index, sample_seed)`` for :class:`llmva_gebc.dist.SeededDataset`; ``set_epoch(e, start_batch=k)``
  resumes. With a ``batch_size`` that is a multiple of 3 every batch holds whole boundaries; otherwise
  the boundaries at batch edges are split (still correct, just less sharing).
* :class:`BoundaryShardSampler` (evaluation / generation): rank ``r`` gets boundaries ``r::world_size``,
  flattened to sample indices; no padding, so every sample is generated exactly once over all ranks.
* :func:`boundary_groups` reads the grouping from a dataset (``dataset.sample_boundary_index``, also
  through ``ConcatDataset`` / ``Subset``).
"""
from __future__ import annotations

import logging
from typing import Iterator, List, Sequence, Tuple

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
        self.num_samples, self.batch_size = n, batch_size
        self.batches_per_epoch = min_samples // batch_size
        if batch_size % 3 and {len(g) for g in self.groups} == {3}:
            log.warning("run.batch_size_train=%d is not a multiple of 3: boundaries at batch edges are split "
                        "(correct, but less prefix sharing)", batch_size)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        mine = [i for g in self._order() for i in self.groups[g]]  # this rank's samples, boundary by boundary
        for b in range(self.start_batch, self.batches_per_epoch):
            idx = mine[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in idx]


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


__all__ = ["boundary_groups", "BoundaryBatchSampler", "BoundaryShardSampler"]
