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

from llmva_gebc.data.samplers import BoundaryShardSampler
from llmva_gebc.engine.evaluator import generate_predictions, write_outputs
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
        groups = [list(range(i, min(i + 3, n))) for i in range(0, n, 3)]  # boundaries of 3 samples
        for world in (1, 2, 3):
            shards = [list(BoundaryShardSampler(groups, r, world)) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(n))
            assert [len(BoundaryShardSampler(groups, r, world)) for r in range(world)] == [len(s) for s in shards]
    with pytest.raises(ValueError):
        BoundaryShardSampler([[0], [1], [2]], 2, 2)


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


# ------------------------------------------------------------------------------------ tiny model, end to end
def _tiny_data(root: Path, n_videos: int = 4) -> Path:
    """Real sample annotations (``n_videos`` videos + ``oc2bib7RLLo``, which has no video_info entry)
    with random cached features of the tiny config's shape (T=4, Q=4, H=32)."""
    import numpy as np

    src = json.loads((ROOT / "tests" / "data" / "valset_highest_f1.sample.json").read_text())
    vids = [v for v in src if v != "oc2bib7RLLo"][:n_videos] + ["oc2bib7RLLo"]
    (root / "annotations").mkdir(parents=True)
    (root / "features" / "tiny").mkdir(parents=True)
    (root / "annotations" / "val.json").write_text(json.dumps({v: src[v] for v in vids}))
    info = json.loads((ROOT / "tests" / "data" / "video_info.sample.json").read_text())
    (root / "annotations" / "video_info.json").write_text(json.dumps(info))
    rng = np.random.default_rng(0)
    for v in vids:
        if v in info:
            np.save(root / "features" / "tiny" / f"{v}.npy", rng.standard_normal((4, 4, 32)).astype(np.float32))
    return root


def _tiny_options(llm_dir, data: Path, out: Path, name: str):
    return [f"model.llm.path={llm_dir}", f"datasets.gebc.annotations.val={data}/annotations/val.json",
            f"datasets.gebc.video_info={data}/annotations/video_info.json",
            f"datasets.gebc.features_dir={data}/features/tiny", f"run.output_dir={out}", f"run.run_name={name}",
            "run.batch_size_eval=4"]


@pytest.mark.slow
def test_tiny_model_end_to_end_one_and_two_processes(tiny_llm_dirs, tmp_path):
    from llmva_gebc.config import load_config
    from llmva_gebc.engine.evaluator import run_evaluation

    data = _tiny_data(tmp_path / "data")
    ann = json.loads((data / "annotations" / "val.json").read_text())
    all_ids = [b["boundary_id"] for bs in ann.values() for b in bs]
    cfg_path = ROOT / "train_configs" / "tiny.yaml"

    t0 = time.perf_counter()
    cfg = load_config(cfg_path, _tiny_options(tiny_llm_dirs["opt"], data, tmp_path / "out", "one"))
    metrics = run_evaluation(cfg, split="val", report=True, progress=False)
    one_s = time.perf_counter() - t0
    run1 = tmp_path / "out" / "one"
    assert sorted(p.name for p in run1.iterdir()) == [
        "metrics_val.json", "predictions_val.json", "report.html", "submission_val.json", "submit_val.pkl"]
    preds1 = json.loads((run1 / "predictions_val.json").read_text())
    available = [i for i in all_ids if not i.startswith("oc2bib7RLLo")]
    assert [(p["boundary_id"], p["type"]) for p in preds1] == [(i, t) for i in available for t in TYPES]
    assert sum(bool(p["caption"].strip()) for p in preds1) > len(preds1) // 2  # a real comparison, not of blanks
    sub = load_submission(run1 / "submit_val.pkl")
    assert list(sub) == all_ids and sub == load_submission(run1 / "submission_val.json")
    assert sub["oc2bib7RLLo_0"] == {"Subject": "", "Status_Before": "", "Status_After": ""}
    assert metrics == json.loads((run1 / "metrics_val.json").read_text()) and metrics["num_boundaries"] == len(all_ids)
    assert all(":" not in c and "//" not in c for caps in sub.values() for c in caps.values())

    t0 = time.perf_counter()
    opts = _tiny_options(tiny_llm_dirs["opt"], data, tmp_path / "out", "two")
    _torchrun([str(ROOT / "evaluate.py"), "--cfg-path", str(cfg_path), "--no-progress", "--allow-untrained",
               "--options", *opts])
    two_s = time.perf_counter() - t0
    run2 = tmp_path / "out" / "two"
    assert json.loads((run2 / "predictions_val.json").read_text()) == preds1  # same captions, once each
    assert load_submission(run2 / "submit_val.pkl") == sub
    assert json.loads((run2 / "metrics_val.json").read_text()) == metrics
    print(f"tiny end to end: 1 process {one_s:.1f}s, torchrun x2 {two_s:.1f}s")
