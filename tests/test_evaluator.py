"""Generation loop over a dataset (1 and 2 processes) and the files of an evaluation run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from llmva_gebc.engine.evaluator import ShardSampler, generate_predictions, write_outputs
from llmva_gebc.eval.submission import load_submission

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
TYPES = ("subject", "status_before", "status_after")

# A fake dataset/model pair shared (as source) by the in-process tests and the torchrun worker script.
FAKES = textwrap.dedent('''
    import torch

    TYPES = ("subject", "status_before", "status_after")

    class FakeDataset(torch.utils.data.Dataset):
        """``n_boundaries`` boundaries; every 4th one unavailable (no samples); 3 samples per boundary."""

        def __init__(self, n_boundaries=7):
            self.boundaries, self.samples = [], []
            for b in range(n_boundaries):
                bid = f"vid{b:08d}_{b % 2}"
                available = b % 4 != 3
                self.boundaries.append({
                    "boundary_id": bid, "video_id": bid[:11], "label": "Change of Action", "timestamp": 1.0 + b,
                    "available": available,
                    "references": {t: f"reference {t} of {b}" for t in TYPES},
                })
                if available:
                    self.samples += [(bid, t) for t in TYPES]

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            bid, t = self.samples[i]
            return {"boundary_id": bid, "type": t, "q_tokens": torch.full((2, 3), float(i))}

        def collater(self, samples):
            return {"boundary_id": [s["boundary_id"] for s in samples], "type": [s["type"] for s in samples],
                    "q_tokens": torch.stack([s["q_tokens"] for s in samples])}  # (B, 2, 3)

    class FakeModel(torch.nn.Module):
        """Caption = a function of the sample alone (batch-invariant), so any sharding gives the same."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = []

        def generate(self, batch, **kw):
            assert not self.training
            self.calls.append(list(zip(batch["boundary_id"], batch["type"])))
            return [f"reference {t} of {int(b[3:11])}: idx {int(x[0, 0])}." if int(x[0, 0]) % 2 else f"guess {t}"
                    for b, t, x in zip(batch["boundary_id"], batch["type"], batch["q_tokens"])]
''')
_ns: dict = {}
exec(compile(FAKES, "fakes", "exec"), _ns)
FakeDataset, FakeModel = _ns["FakeDataset"], _ns["FakeModel"]


def test_shard_sampler_covers_each_index_once_without_padding():
    for n in (0, 1, 5, 10):
        for world in (1, 2, 3):
            shards = [list(ShardSampler(n, r, world)) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(n))
            assert [len(ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]
    with pytest.raises(ValueError):
        ShardSampler(3, 2, 2)


def test_generate_predictions_single_process():
    ds, model = FakeDataset(), FakeModel()
    model.train()
    preds = generate_predictions(model, ds, batch_size=4, progress=False)
    assert model.training  # mode restored
    assert [(p["boundary_id"], p["type"]) for p in preds] == ds.samples  # dataset order, once each
    assert len({(p["boundary_id"], p["type"]) for p in preds}) == len(ds) == 18
    assert preds[1]["caption"] == "reference status_before of 0: idx 1."
    assert [len(c) for c in model.calls] == [4, 4, 4, 4, 2]
    sub = generate_predictions(model, ds, batch_size=2, progress=False, indices=[5, 0, 7])
    assert [(p["boundary_id"], p["type"]) for p in sub] == [ds.samples[i] for i in (5, 0, 7)]

    class Bad(FakeModel):
        def generate(self, batch, **kw):
            return ["x"]

    with pytest.raises(RuntimeError, match="returned 1 captions for a batch of 4"):
        generate_predictions(Bad(), ds, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        generate_predictions(model, ds, batch_size=0)


def test_write_outputs_covers_unavailable_boundaries(tmp_path):
    ds = FakeDataset()
    preds = generate_predictions(FakeModel(), ds, batch_size=5, progress=False)
    metrics = write_outputs(tmp_path, "val", preds, ds.boundaries, spice=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["metrics_val.json", "predictions_val.json", "submission_val.json", "submit_val.pkl"]
    assert json.loads((tmp_path / "predictions_val.json").read_text()) == preds
    sub = load_submission(tmp_path / "submit_val.pkl")
    assert sub == load_submission(tmp_path / "submission_val.json")
    assert list(sub) == [b["boundary_id"] for b in ds.boundaries]  # every id, incl. unavailable ones
    assert sub["vid00000003_1"] == {"Subject": "", "Status_Before": "", "Status_After": ""}
    assert sub["vid00000000_0"]["Status_Before"] == "reference status_before of 0 idx 1"  # ':' and '.' gone
    assert json.loads((tmp_path / "metrics_val.json").read_text()) == metrics
    assert metrics["num_boundaries"] == 7 and 0 < metrics["ROUGE_L"] < 100
    # a split without references (test): no metrics file
    no_refs = [dict(b, references=None) for b in ds.boundaries]
    assert write_outputs(tmp_path / "test", "test", preds, no_refs) is None
    assert not (tmp_path / "test" / "metrics_test.json").exists()


WORKER = FAKES + textwrap.dedent('''
    import json, os, sys
    from llmva_gebc import dist
    from llmva_gebc.engine.evaluator import generate_predictions

    rank, _, world = dist.init_distributed("gloo")
    assert world == 2, world
    model = FakeModel()
    preds = generate_predictions(model, FakeDataset(), batch_size=2, progress=False, distributed=True)
    mine = [s for c in model.calls for s in c]
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump({"preds": preds, "mine": mine}, f)
    dist.destroy()
''')


def _torchrun(args, env=None, timeout=240):
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found next to {sys.executable}")
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_processes_give_the_same_predictions_once_each(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    _torchrun([str(script), str(tmp_path)])
    one = generate_predictions(FakeModel(), FakeDataset(), batch_size=2, progress=False)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["preds"] == r1["preds"] == one  # every rank gets the full, ordered list
    mine0, mine1 = ({tuple(x) for x in r["mine"]} for r in (r0, r1))
    assert not mine0 & mine1 and len(r0["mine"]) + len(r1["mine"]) == len(FakeDataset())  # no sample twice
