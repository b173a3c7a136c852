"""Faults during long runs (issue 13): resume with other settings, partial logs, failed validation,
failed loads, I/O errors. Toy model, single process, seconds each."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from llmva_gebc.engine import checkpointing as ckpt
from llmva_gebc.engine.trainer import Runner
from test_trainer_tiny import feats_dir, tiny_options  # noqa: F401  (fixture)
from train_toy import Killed, ToyCaptioner, ToyDataset, die_after_checkpoint, toy_config, toy_datasets


def _records(run_dir: Path, kind: str):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def _toy_model(seed: int = 0) -> ToyCaptioner:
    torch.manual_seed(seed)
    return ToyCaptioner()


def _run(cfg, model=None, datasets=None) -> Runner:
    r = Runner(cfg, model=model or _toy_model(), datasets=datasets or toy_datasets())
    r.train()
    return r


class _Recording(ToyDataset):
    """A toy training set that records which samples were loaded."""

    def __init__(self, n: int) -> None:
        super().__init__(n, True)
        self.seen: list = []

    def __getitem__(self, i: int):
        self.seen.append(int(i))
        return super().__getitem__(i)


def test_resume_with_larger_batch_trains_every_sample_of_the_epoch_once(tmp_path, monkeypatch, caplog):
    # 68 samples: batch 4 -> 17 batches; killed after step 5 (20 samples), resumed with batch 8:
    # the 48 samples left are 6 batches of 8. Counting batches instead would skip 24 samples.
    common = dict(max_epoch=1, save_every_steps=5, evaluate_each_epoch=False)
    first = _Recording(68)
    die_after_checkpoint(monkeypatch, 5)
    with pytest.raises(Killed):
        _run(toy_config(tmp_path, batch_size_train=4, **common), datasets={"train": first, "val": None, "test": None})
    monkeypatch.undo()
    assert len(first.seen) == 20
    last = tmp_path / "out" / "toy" / "checkpoint_last"
    _, st, _ = ckpt.load_checkpoint(last)
    assert (st["samples_in_epoch"], st["batch_size_train"]) == (20, 4)

    second = _Recording(68)
    with caplog.at_level(logging.WARNING, logger="llmva_gebc.train"):
        r = _run(toy_config(tmp_path, batch_size_train=8, resume=str(last), **common),
                 datasets={"train": second, "val": None, "test": None})
    assert "continues after its first 20 samples with 6 batches of 8" in caplog.text
    trained = first.seen + second.seen
    assert sorted(trained) == list(range(68))  # each sample exactly once, none skipped
    assert r.global_step == 5 + 6
    assert [x["step"] for x in _records(r.run_dir, "train")] == list(range(1, 12))


def test_mid_epoch_resume_that_a_mixture_sampler_cannot_remap_is_refused(tmp_path, monkeypatch):
    from llmva_gebc.data.samplers import MixedDataset
    from llmva_gebc.errors import UserError

    def data():
        return {"train": MixedDataset([ToyDataset(40), ToyDataset(24, seed=2)], ["a", "b"], [1.0, 1.0]),
                "val": None, "test": None}

    common = dict(max_epoch=1, save_every_steps=5, evaluate_each_epoch=False)
    die_after_checkpoint(monkeypatch, 5)
    with pytest.raises(Killed):
        _run(toy_config(tmp_path, batch_size_train=4, **common), datasets=data())
    monkeypatch.undo()
    last = tmp_path / "out" / "toy" / "checkpoint_last"
    with pytest.raises(UserError, match=r"written mid-epoch \(epoch 0, after 20 samples\) with batch size 4 x 1 "
                                        r"processes; .*MixtureBatchSampler.*Resume with run.batch_size_train=4"):
        _run(toy_config(tmp_path, batch_size_train=8, resume=str(last), **common), datasets=data())
    r = _run(toy_config(tmp_path, batch_size_train=4, resume=str(last), **common), datasets=data())
    assert r.global_step == 16  # 64 samples / 4, continued after step 5


def test_resume_restores_epoch_loss_and_drops_a_partial_log_line(tmp_path, monkeypatch, caplog):
    common = dict(max_epoch=2, save_every_steps=5)
    full = _run(toy_config(tmp_path / "a", **common))
    die_after_checkpoint(monkeypatch, 10)  # mid-epoch 1 (16 steps per epoch)
    cfg_b = toy_config(tmp_path / "b", **common)
    with pytest.raises(Killed):
        _run(cfg_b)
    monkeypatch.undo()
    run_b = Path(cfg_b.run.output_dir) / "toy"
    with open(run_b / "metrics.jsonl", "a") as f:  # what a kill in the middle of a write leaves
        f.write('{"type": "train", "step": 11, "lo')
    with caplog.at_level(logging.WARNING, logger="llmva_gebc.train"):
        resumed = _run(toy_config(tmp_path / "b", resume=str(run_b / "checkpoint_last"), **common))
    assert "metrics.jsonl: its last line is not valid JSON" in caplog.text
    ea, eb = _records(full.run_dir, "epoch"), _records(resumed.run_dir, "epoch")
    assert [e["train_loss"] for e in eb] == [e["train_loss"] for e in ea]  # exact: same steps, same order
    assert [e["val_loss"] for e in eb] == [e["val_loss"] for e in ea]
    assert _records(resumed.run_dir, "train") == [
        {**r, "samples_per_s": x["samples_per_s"]} for r, x in zip(_records(full.run_dir, "train"),
                                                                     _records(resumed.run_dir, "train"))]


def test_failed_validation_keeps_the_epoch_and_resume_reruns_it(tmp_path, monkeypatch):
    full = _run(toy_config(tmp_path / "a", max_epoch=2))
    calls = {"n": 0}
    real_validate = Runner._validate

    def validate_fails_once(self):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's validation
            raise RuntimeError("scorer crashed")
        return real_validate(self)

    monkeypatch.setattr(Runner, "_validate", validate_fails_once)
    cfg_b = toy_config(tmp_path / "b", max_epoch=2)
    with pytest.raises(RuntimeError, match="scorer crashed"):
        _run(cfg_b)
    monkeypatch.undo()
    run_b = Path(cfg_b.run.output_dir) / "toy"
    _, st, _ = ckpt.load_checkpoint(run_b / "checkpoint_last")
    assert (st["epoch"], st["global_step"], st["pending_validation"]["epoch"]) == (2, 32, 1)
    resumed = _run(toy_config(tmp_path / "b", max_epoch=2, resume=str(run_b / "checkpoint_last")))
    assert resumed.global_step == 32  # no training step repeated: only the validation ran
    strip = [{k: v for k, v in e.items()} for e in _records(full.run_dir, "epoch")]
    assert _records(resumed.run_dir, "epoch") == strip
    a, b = full.model.trainable_state_dict(), resumed.model.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    _, st, _ = ckpt.load_checkpoint(run_b / "checkpoint_last")
    assert st["pending_validation"] is None


# ------------------------------------------------------------------------------------ failed loads
def test_failed_load_leaves_the_model_untouched(tiny_cfg_factory, tmp_path):
    from safetensors.torch import save_file

    from llmva_gebc.models import build_model
    from llmva_gebc.models.checkpoint import load_trainable

    torch.manual_seed(0)
    model = build_model(tiny_cfg_factory("opt").model)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    torch.manual_seed(1)
    other = {k: torch.randn_like(v) for k, v in before.items()}
    last = sorted(other)[-1]  # every other key would be copied first by a check-as-you-go load
    other[last] = torch.randn(*[d + 1 for d in other[last].shape])
    with pytest.raises(ValueError, match=f"shape mismatch for 1 tensors: '{last}'") as e:
        model.load_trainable_state_dict(other)
    assert "nothing was loaded" in str(e.value)
    save_file(other, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path}.*does not fit the model: shape mismatch"):
        load_trainable(model, tmp_path)
    del other[last]
    other["adapter.not_a_weight"] = torch.zeros(1)
    save_file(other, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match="unexpected"):
        load_trainable(model, tmp_path, allow_partial=True)
    after = model.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_truncated_checkpoints_name_the_file(tmp_path, monkeypatch, capsys):
    from llmva_gebc.models.checkpoint import CheckpointReadError, main, read_state_dict

    r = _run(toy_config(tmp_path, max_epoch=1, evaluate_each_epoch=False))
    last = r.run_dir / "checkpoint_last"
    weights = last / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-100])
    with pytest.raises(CheckpointReadError, match=f"checkpoint {weights} is truncated or corrupt"):
        Runner(toy_config(tmp_path, max_epoch=2, resume=str(last)), model=_toy_model(),
               datasets=toy_datasets()).train()
    with pytest.raises(CheckpointReadError, match="truncated or corrupt"):
        read_state_dict(weights)  # what evaluate.py --ckpt and llmva_gebc.load read
    weights.write_bytes(good)
    state = last / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:200])
    with pytest.raises(CheckpointReadError, match=f"cannot read {state}.*truncated or corrupt"):
        ckpt.load_checkpoint(last)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    capsys.readouterr()
    assert main(["convert", str(listed), str(tmp_path / "conv")]) == 2
    assert capsys.readouterr().err == f"error: {listed}: expected a state dict or {{'model': state_dict}}, got list\n"


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_a_cut_or_random_pth_is_called_truncated_or_corrupt(tmp_path, capsys, fraction):
    """Whatever torch.load trips on (an OSError 'Invalid argument', a zip error, the unpickler), the line
    says the file is truncated or corrupt and never relays torch's advice to retry with weights_only=False."""
    from llmva_gebc.models.checkpoint import main

    good = tmp_path / "good.pth"
    torch.save({"adapter.w": torch.randn(10000)}, good)
    data = good.read_bytes()
    cut, rnd = tmp_path / "cut.pth", tmp_path / "random.pth"
    cut.write_bytes(data[:int(len(data) * fraction)])
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    for bad in (cut, rnd):
        assert main(["convert", str(bad), str(tmp_path / "conv")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: ") and str(bad) in err and err.count("\n") == 1
        assert "truncated or corrupt" in err or "not a weights-only torch checkpoint" in err
        assert "weights_only set to False" not in err


# ------------------------------------------------------------------------------------ full disk, read-only
def _disk_fills_after(monkeypatch, module, nbytes: int):
    """Files opened for writing by ``module`` raise ENOSPC once ``nbytes`` have been written to them."""
    import builtins
    import errno

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > nbytes:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def full_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return Full(f) if "w" in mode else f

    monkeypatch.setattr(module, "open", full_open, raising=False)


def test_disk_full_during_checkpoint_save_names_the_path_and_keeps_the_previous(tmp_path, monkeypatch):
    from llmva_gebc.fileio import OutputWriteError

    r = _run(toy_config(tmp_path, max_epoch=1, evaluate_each_epoch=False))
    last = r.run_dir / "checkpoint_last"
    w0, st0, _ = ckpt.load_checkpoint(last)
    _disk_fills_after(monkeypatch, ckpt, 600)  # the weights fit, trainer_state.pt does not
    with pytest.raises(OutputWriteError) as e:
        _run(toy_config(tmp_path, max_epoch=2, resume=str(last), evaluate_each_epoch=False))
    best = r.run_dir / "checkpoint_best"  # without validation, written first at each epoch end
    assert str(e.value) == (f"cannot write checkpoint {best}: disk full (No space left on device); the previous "
                            "checkpoint there (if any) is kept")
    assert e.value.errno == 28
    monkeypatch.undo()
    for d0 in (last, best):
        w1, st1, d = ckpt.load_checkpoint(d0)
        assert d == d0 and st1["global_step"] == st0["global_step"] and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert sorted(p.name for p in r.run_dir.iterdir() if "tmp" in p.name) == []  # temporaries removed


def test_stale_temporaries_of_a_killed_save_are_removed_on_the_next_start(tmp_path):
    r = _run(toy_config(tmp_path, max_epoch=1, evaluate_each_epoch=False))
    stale_dir = r.run_dir / "checkpoint_last.tmp-999999"  # a pid that is not running
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"partial")
    stale_file = r.run_dir / ".submission_val.json.999999.tmp"
    stale_file.write_text("{")
    live = r.run_dir / "checkpoint_best.tmp-1"  # pid 1 is alive: another process's write in progress
    live.mkdir()
    _run(toy_config(tmp_path, max_epoch=2, resume=str(r.run_dir / "checkpoint_last"), evaluate_each_epoch=False))
    assert not stale_dir.exists() and not stale_file.exists() and live.exists()


def test_disk_full_while_writing_outputs_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    from llmva_gebc import fileio
    from llmva_gebc.eval import submission
    from llmva_gebc.fileio import OutputWriteError

    target = tmp_path / "submission_val.json"
    target.write_text("old")
    _disk_fills_after(monkeypatch, fileio, 10)
    with pytest.raises(OutputWriteError, match=f"cannot write {target}: disk full"):
        submission.write_json({"a_0": {"Subject": "x" * 100}}, target)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["submission_val.json"]


def test_unwritable_output_directory_fails_before_any_work(tmp_path, monkeypatch):
    import errno

    from llmva_gebc import fileio
    from llmva_gebc.fileio import OutputWriteError, check_writable_dir

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputWriteError, match=f"output directory {blocker}/run is not writable: a path component"):
        check_writable_dir(blocker / "run")
    real_open = open

    def read_only(path, mode="r", *a, **kw):  # a read-only mount (chmod does not stop root)
        if "w" in mode:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(fileio, "open", read_only, raising=False)
    run_dir = tmp_path / "out" / "toy"
    with pytest.raises(OutputWriteError, match=f"run directory {run_dir} is not writable: read-only file system"):
        Runner(toy_config(tmp_path), model=_toy_model(), datasets=toy_datasets()).train()
    assert list(run_dir.iterdir()) == []  # failed before writing anything
    monkeypatch.undo()

    # evaluate.py: the output directory is checked before the dataset, the model and any generation
    from llmva_gebc.engine.evaluator import run_evaluation

    cfg = toy_config(tmp_path, output_dir=str(blocker))  # no datasets: anything after the check would fail
    with pytest.raises(OutputWriteError, match=f"output directory {blocker}/toy is not writable"):
        run_evaluation(cfg, split="val", progress=False)


# ------------------------------------------------------------------------------------ metrics, subsets
def _broken_spice_jars(d: Path) -> Path:
    """Correctly named CoreNLP jars holding no classes: what an interrupted download leaves."""
    import zipfile

    from llmva_gebc.eval import metrics as M

    if M.pycocoevalcap_spice_dir() is None or M.java_major_version() is None:
        pytest.skip("needs java and pycocoevalcap's spice-1.0.jar")
    d.mkdir(parents=True, exist_ok=True)
    for name in M.CORENLP_JARS:
        with zipfile.ZipFile(d / name, "w") as z:
            z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    return d


@pytest.fixture
def broken_spice(tmp_path, monkeypatch):
    from llmva_gebc.eval import metrics as M

    monkeypatch.setenv(M.SPICE_LIB_ENV, str(_broken_spice_jars(tmp_path / "spice_lib")))
    monkeypatch.setattr(M, "_SPICE_FAILED", {})


def test_training_survives_a_broken_spice(tiny_cfg_factory, feats_dir, tmp_path, broken_spice, caplog):
    from llmva_gebc.engine.trainer import train
    from llmva_gebc.eval.metrics import MetricsError

    opts = tiny_options(feats_dir, tmp_path / "auto", "run.max_epoch=1", "run.max_steps=3", "run.batch_size_train=8",
                        "run.max_eval_boundaries=10", "run.test_splits=[]", "run.spice_heap=1G")
    with caplog.at_level(logging.WARNING):
        run_dir = train(tiny_cfg_factory("opt", *opts))
    epoch = _records(run_dir, "epoch")[0]
    assert epoch["SPICE"] is None and epoch["score"] is None and epoch["score_without_spice"] is not None
    assert epoch["num_boundaries"] == 10 and epoch["best_metric"] == "agg_metrics"
    assert len([r for r in caplog.records if "SPICE failed" in r.getMessage()]) == 1
    assert (run_dir / "checkpoint_last").is_dir() and (run_dir / "checkpoint_best").is_dir()

    # spice: required: validation fails, but the epoch's training was saved first and is resumable
    opts = tiny_options(feats_dir, tmp_path / "req", "run.max_epoch=1", "run.max_steps=3", "run.batch_size_train=8",
                        "run.max_eval_boundaries=10", "run.test_splits=[]", "run.spice=required")
    with pytest.raises(MetricsError, match=r"SPICE failed .*spice: required"):
        train(tiny_cfg_factory("opt", *opts))
    run_dir = tmp_path / "req" / run_dir.name
    _, st, _ = ckpt.load_checkpoint(run_dir / "checkpoint_last")
    assert st["global_step"] == 3 and st["pending_validation"]["epoch"] == 0
    assert (run_dir / "val_predictions_epoch0.json").is_file()  # what was generated is kept


def test_validation_subsets_are_whole_boundaries_and_tiny_ones_select_by_loss(tiny_cfg_factory, feats_dir,
                                                                            tmp_path, caplog):
    from llmva_gebc.engine.trainer import train

    opts = tiny_options(feats_dir, tmp_path, "run.max_epoch=1", "run.max_steps=2", "run.batch_size_train=8",
                        "run.max_eval_boundaries=2", "run.test_splits=[]", "run.spice=off")
    with caplog.at_level(logging.WARNING):
        run_dir = train(tiny_cfg_factory("opt", *opts))
    preds = json.loads((run_dir / "val_predictions_epoch0.json").read_text())
    assert len(preds) == 2  # two boundaries, each with its three caption types generated
    assert all(set(c) == {"Subject", "Status_Before", "Status_After"} for c in preds.values())
    epoch = _records(run_dir, "epoch")[0]
    assert epoch["num_boundaries"] == 2 and epoch["cider_reliable"] is False
    assert epoch["best_metric"] == "val_loss" and epoch["best_value"] == epoch["val_loss"]
    assert "scoring 2 boundaries: CIDEr-D's document frequencies need a corpus" in caplog.text
    assert "validation scores only 2 boundaries, too few for CIDEr" in caplog.text


def test_evaluate_keeps_outputs_and_prints_one_line_when_scoring_fails(tiny_llm_dirs, tmp_path, broken_spice, capsys):
    import evaluate
    from test_evaluator import _tiny_data, _tiny_options

    data = _tiny_data(tmp_path / "data")
    argv = ["--cfg-path", str(Path(evaluate.__file__).parent / "train_configs" / "tiny.yaml"), "--no-progress",
            "--allow-untrained",
            "--options", *_tiny_options(tiny_llm_dirs["opt"], data, tmp_path / "out", "ev"), "run.spice=required"]
    assert evaluate.main(argv) == 2
    stderr = capsys.readouterr().err
    err = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in stderr and len(err) == 1
    assert err[0].startswith("error: scoring val failed: SPICE failed")
    assert "kept" in err[0] and "submission_val.json" in err[0]
    run = tmp_path / "out" / "ev"
    assert sorted(p.name for p in run.iterdir()) == ["predictions_val.json", "submission_val.json", "submit_val.pkl"]
