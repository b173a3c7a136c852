"""Boundary-grouping samplers: whole boundaries per batch, seeded shuffling, DDP sharding, resume."""
import pytest
import torch

from llmva_gebc.data.samplers import BoundaryBatchSampler, BoundaryShardSampler, boundary_groups
from llmva_gebc.dist import SeededDataset, sample_seed


class FakeGEBC(torch.utils.data.Dataset):
    """``num_boundaries`` boundaries of 3 samples each, as GEBCDataset lays them out."""

    def __init__(self, num_boundaries: int, skip=()):
        self.sample_boundary_index = [b for b in range(num_boundaries) if b not in skip for _ in range(3)]

    def __len__(self):
        return len(self.sample_boundary_index)

    def __getitem__(self, i):
        return i


def boundary_of(ds, i):
    return ds.sample_boundary_index[i]


def test_boundary_groups_from_datasets():
    ds = FakeGEBC(4, skip=(1,))
    assert boundary_groups(ds) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    cat = torch.utils.data.ConcatDataset([FakeGEBC(2), FakeGEBC(1)])  # boundary 0 of each part differs
    assert boundary_groups(cat) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    sub = torch.utils.data.Subset(FakeGEBC(3), [8, 0, 7, 1])
    assert boundary_groups(sub) == [[0, 2], [1, 3]]
    assert boundary_groups(SeededDataset(ds)) == boundary_groups(ds)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_training_batches_keep_boundaries_and_shard(world):
    ds = FakeGEBC(11)
    groups = boundary_groups(ds)
    samplers = [BoundaryBatchSampler(groups, 6, rank=r, world_size=world, seed=5) for r in range(world)]
    per_rank = [[b for b in s] for s in samplers]
    n_batches = {len(b) for b in per_rank}
    assert n_batches == {samplers[0].batches_per_epoch} and samplers[0].batches_per_epoch > 0
    seen = []
    for batches in per_rank:
        for batch in batches:
            idx = [i for i, _ in batch]
            assert len(idx) == 6
            assert all(seed == sample_seed(5, 0, i) for i, seed in batch)
            bounds = [boundary_of(ds, i) for i in idx]
            for b in set(bounds):  # whole boundaries, in type order
                assert [i for i in idx if boundary_of(ds, i) == b] == groups[b]
            seen += sorted(set(bounds))
    # ranks get different boundaries (padding by wrap-around may repeat only when G % world != 0)
    pad = -(-11 // world) * world - 11
    assert len(seen) - len(set(seen)) <= pad


def test_shuffling_is_seeded_and_changes_with_epoch():
    groups = boundary_groups(FakeGEBC(20))
    s = BoundaryBatchSampler(groups, 6, seed=1)
    e0 = [i for b in s for i, _ in b]
    assert e0 == [i for b in BoundaryBatchSampler(groups, 6, seed=1) for i, _ in b]
    s.set_epoch(1)
    e1 = [i for b in s for i, _ in b]
    assert e0 != e1 and sorted(e0) == sorted(e1) == list(range(60))
    assert e0 != [i for b in BoundaryBatchSampler(groups, 6, seed=2) for i, _ in b]
    ordered = [i for b in BoundaryBatchSampler(groups, 6, shuffle=False) for i, _ in b]
    assert ordered == list(range(60))


def test_resume_mid_epoch_continues_the_same_order():
    groups = boundary_groups(FakeGEBC(13))
    s = BoundaryBatchSampler(groups, 3, rank=1, world_size=2, seed=9)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start_batch=4)
    assert list(s) == full[4:] and len(s) == len(full) - 4


def test_uneven_groups_same_batch_count_every_rank_and_epoch():
    groups = [[0, 1, 2], [3], [4, 5], [6, 7, 8], [9, 10, 11], [12]]
    for epoch in range(4):
        counts = set()
        for r in range(2):
            s = BoundaryBatchSampler(groups, 2, rank=r, world_size=2, seed=0)
            s.set_epoch(epoch)
            counts.add(len(list(s)))
        assert counts == {s.batches_per_epoch}


def test_too_small_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="batch_size_train"):
        BoundaryBatchSampler(boundary_groups(FakeGEBC(2)), 9)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_shards_by_boundary_without_duplicates(world):
    ds = FakeGEBC(10, skip=(4,))
    groups = boundary_groups(ds)
    shards = [list(BoundaryShardSampler(groups, r, world)) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(len(ds)))  # every sample exactly once
    owner = {}
    for r, s in enumerate(shards):
        for i in s:
            assert owner.setdefault(boundary_of(ds, i), r) == r  # a boundary never spans ranks
    loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=BoundaryShardSampler(groups, 0, world))
    for batch in loader:
        assert len({boundary_of(ds, int(i)) for i in batch}) == 1
    with pytest.raises(ValueError):
        BoundaryShardSampler(groups, 2, 2)
