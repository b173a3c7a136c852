"""The command-line layer (issue 14): run directories never reused by accident, ``--resume`` writes only
into its own directory, user errors are one ``error:`` line with exit status 2 in every CLI, score mode
and ``import llmva_gebc`` import no torch, warnings once, external chatter captured."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_trainer_tiny import feats_dir, tiny_options  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
SAMPLE = DATA / "valset_highest_f1.sample.json"


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1",
               **extra)
    for k in ("WORLD_SIZE", "RANK", "LLMVA_DEBUG"):
        env.pop(k, None)
    return env


def _cli(*args, cwd=None, **env):
    """Run a CLI in a subprocess: (returncode, stdout, stderr)."""
    p = subprocess.run([sys.executable, *map(str, args)], env=_env(**env), capture_output=True, text=True,
                       timeout=300, cwd=cwd or REPO)
    return p.returncode, p.stdout, p.stderr


def _one_error_line(rc, err, *needles):
    """Exit status 2, no traceback, and the error as the one last line ``error: ...`` (log lines written
    before it, e.g. INFO lines of the evaluation, may precede it)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err[-3000:]
    assert sum(ln.startswith("error: ") for ln in lines) == 1, err[-3000:]
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def _steps(run_dir: Path):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if r["type"] == "train"]


# ----------------------------------------------------------------------------------- run directories
def test_second_run_into_the_same_directory_is_refused_and_overwrite_empties_it(tiny_cfg_factory, feats_dir,  # noqa: F811
                                                                               tmp_path, caplog):
    from llmva_gebc.engine.trainer import train
    from llmva_gebc.errors import RunDirError

    opts = tiny_options(feats_dir, tmp_path, "run.valid_splits=[]", "run.test_splits=[]", "run.max_steps=2")
    with caplog.at_level(logging.INFO, logger="llmva_gebc.train"):
        run_dir = train(tiny_cfg_factory("opt", *opts))
    assert _steps(run_dir) == [1, 2]
    # no terminal here: no progress bar, a plain log line instead (the first logged step, then every 30 s)
    assert any(r.getMessage().startswith("step 1/2 (epoch 0): loss ") for r in caplog.records)
    assert any("torch threads: 1" in r.getMessage() for r in caplog.records)
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError) as e:
        train(tiny_cfg_factory("opt", *opts))
    msg = str(e.value)
    assert str(run_dir) in msg and "--resume" in msg and "run.run_name" in msg and "--overwrite" in msg
    assert (run_dir / "metrics.jsonl").read_text() == before  # nothing written by the refused run
    (run_dir / "val_predictions_epoch7.json").write_text("{}")  # a stale file of the old run
    run_dir = train(tiny_cfg_factory("opt", *opts, "run.max_steps=1", "run.overwrite=true"))
    assert _steps(run_dir) == [1]  # one run only in metrics.jsonl
    assert not (run_dir / "val_predictions_epoch7.json").exists()
    env = json.loads((run_dir / "env.json").read_text())
    assert env["torch_num_threads"] >= 1


def test_resume_writes_only_into_its_own_directory(tiny_cfg_factory, feats_dir, tmp_path):  # noqa: F811
    from llmva_gebc.engine.trainer import train

    opts = tiny_options(feats_dir, tmp_path, "run.valid_splits=[]", "run.test_splits=[]")
    first = train(tiny_cfg_factory("opt", *opts, "run.max_steps=2", "run.run_name=first"))
    other = train(tiny_cfg_factory("opt", *opts, "run.max_steps=1", "run.run_name=other"))
    other_log = (other / "metrics.jsonl").read_text()
    # the config names run "other"; --resume first/ continues in first/ and leaves other/ alone
    out = train(tiny_cfg_factory("opt", *opts, "run.max_steps=3", "run.run_name=other",
                                 f"run.resume={first / 'checkpoint_last'}"))
    assert out == first and _steps(first) == [1, 2, 3]
    assert (other / "metrics.jsonl").read_text() == other_log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "other"]


def test_run_num_threads_sets_and_records_the_thread_count():
    import torch

    from llmva_gebc.engine.trainer import set_num_threads

    n = torch.get_num_threads()
    try:
        assert set_num_threads(1) == 1 == torch.get_num_threads()
        assert set_num_threads(None) == 1
    finally:
        torch.set_num_threads(n)
    from llmva_gebc.config import ConfigError

    with pytest.raises(ConfigError, match="run.num_threads"):
        set_num_threads(0)


# ----------------------------------------------------------------------------------- one-line errors
def test_train_cli_user_errors_are_one_line_with_exit_2(tmp_path):
    cfg = REPO / "train_configs" / "tiny.yaml"
    train = REPO / "train.py"
    _one_error_line(*_cli(train, "--cfg-path", cfg, "--options", "run.max_epoh=1")[::2], "run.max_epoh")
    _one_error_line(*_cli(train, "--cfg-path", tmp_path / "nope.yaml")[::2], "config file not found")
    # a missing LLM folder under the tiny config's default path names the one command that makes it
    rc, _, err = _cli(train, "--cfg-path", cfg, cwd=tmp_path)
    _one_error_line(rc, err, "model.llm.path", "build/tiny_llm", "make tiny")
    rc, _, err = _cli(train, "--cfg-path", cfg, LLMVA_TINY_LLM=str(tmp_path / "nollm"))
    _one_error_line(rc, err, "model.llm.path", "nollm", "LLMVA_TINY_LLM")
    # --debug shows the traceback
    rc, _, err = _cli(train, "--cfg-path", cfg, "--options", "run.max_epoh=1", "--debug")
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_smollm2_config_without_its_variable_says_how_to_get_the_folder():
    env = {k: v for k, v in os.environ.items() if k != "LLMVA_SMOLLM2_DIR"}
    p = subprocess.run([sys.executable, "train.py", "--cfg-path", "train_configs/demo_smollm2.yaml"],
                       env={**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    _one_error_line(p.returncode, p.stderr, "LLMVA_SMOLLM2_DIR", "python -m llmva_gebc.models.assets")


@pytest.fixture(scope="module")
def trained_run(tiny_llm_dirs, feats_dir, tmp_path_factory):  # noqa: F811
    from llmva_gebc.config import load_config
    from llmva_gebc.engine.trainer import train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(REPO / "train_configs" / "tiny.yaml",
                      [f"model.llm.path={tiny_llm_dirs['opt']}",
                       *tiny_options(feats_dir, out, "run.valid_splits=[]", "run.test_splits=[]", "run.max_steps=1")])
    return train(cfg), [f"model.llm.path={tiny_llm_dirs['opt']}", *tiny_options(feats_dir, out)]


def test_evaluate_cli_user_errors_are_one_line_with_exit_2(trained_run, tmp_path):
    run_dir, opts = trained_run
    cfg = REPO / "train_configs" / "tiny.yaml"
    base = ["evaluate.py", "--cfg-path", cfg, "--options", *opts, f"run.output_dir={tmp_path}"]
    _one_error_line(*_cli(*base)[::2], "--ckpt", "--allow-untrained")  # no silent random-adapter evaluation
    _one_error_line(*_cli(*base, "--ckpt", run_dir / "checkpoint_best", "--split", "dev")[::2],
                    "--split dev", "test, train, val")
    _one_error_line(*_cli(*base, "--ckpt", tmp_path / "missing")[::2], "checkpoint not found", "missing")
    # a checkpoint from another config names the differing keys
    line = _one_error_line(*_cli(*base, "model.adapter.num_layers=1", "--ckpt", run_dir / "checkpoint_best")[::2])
    assert "model.adapter.num_layers: checkpoint 2 vs config 1" in line
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no file written by the refused evaluations


def test_evaluate_allow_untrained_marks_the_metrics(trained_run, tmp_path):
    _, opts = trained_run
    sys.path.insert(0, str(REPO))
    try:
        import evaluate
    finally:
        sys.path.pop(0)
    assert evaluate.main(["--cfg-path", str(REPO / "train_configs" / "tiny.yaml"), "--allow-untrained",
                          "--options", *opts, f"run.output_dir={tmp_path}", "run.max_eval_boundaries=2"]) == 0
    assert json.loads((tmp_path / "tiny" / "metrics_val.json").read_text())["untrained"] is True


def test_module_clis_user_errors_are_one_line_with_exit_2(tmp_path, capfd):
    from llmva_gebc import caption, demo, extract, webui
    from llmva_gebc.eval import gebd
    from llmva_gebc.data import synthetic
    from llmva_gebc.models import checkpoint, tiny

    missing = str(tmp_path / "missing.yaml")
    cases = [
        (extract.main, ["--cfg-path", missing, "--videos", str(tmp_path), "--out", str(tmp_path / "f")], missing),
        (caption.main, ["v.mp4", "--cfg-path", missing, "--boundaries", "1"], missing),
        (checkpoint.main, ["convert", str(tmp_path / "nope.pth"), str(tmp_path / "o")], "nope.pth"),
        (tiny.main, ["--setup", "--cfg-path", missing], missing),
        (demo.main, ["--out", str(tmp_path / "d"), "--config", missing], missing),
        (synthetic.main, ["--out", str(tmp_path / "s"), "--num-videos", "1"], "num_videos"),
        (webui.main, ["--cfg-path", missing], ""),  # the missing config, or Gradio when not installed
        (gebd.main, ["--pred", str(tmp_path / "p.json"), "--annotations", "a", "--video-info", "v"], "p.json"),
    ]
    capfd.readouterr()
    for fn, argv, needle in cases:
        rc = fn(argv)
        _one_error_line(rc, capfd.readouterr().err, needle)


def test_help_texts(capsys):
    sys.path.insert(0, str(REPO))
    try:
        import evaluate
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: evaluate.py") and out.count("Model mode") == 1 and "{val,test,train}" in out
    from llmva_gebc import extract
    from llmva_gebc.data import synthetic

    for mod, prog in ((extract, "python -m llmva_gebc.extract"), (synthetic, "python -m llmva_gebc.data.synthetic")):
        with pytest.raises(SystemExit):
            mod.main(["--help"])
        assert capsys.readouterr().out.startswith(f"usage: {prog}")


# ----------------------------------------------------------------------------------- light imports, quiet
def test_import_and_score_mode_import_no_torch(tmp_path):
    from llmva_gebc.eval.submission import references_from_annotations, write_submission

    _, pkl = write_submission(references_from_annotations(SAMPLE), tmp_path, "val")
    code = (
        "import sys, io, contextlib\n"
        "import llmva_gebc\n"
        "light = not ({'torch', 'transformers'} & set(sys.modules))\n"
        "sys.path.insert(0, sys.argv[1]); import evaluate\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = evaluate.main(['--score', sys.argv[2], '--annotations', sys.argv[3]])\n"
        "print(light, rc, sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    rc, out, err = _cli("-c", code, REPO, pkl, SAMPLE)
    assert rc == 0, err
    assert out.split("\n")[0] == "True 0 []"
    # Java's PTBTokenizer lines are captured; the SPICE warning appears once
    assert "PTBTokenizer" not in err and err.count("SPICE unavailable") == 1


def test_registries_still_see_every_builtin_after_a_light_import():
    code = ("import sys, llmva_gebc\nassert 'torch' not in sys.modules\n"
            "from llmva_gebc.registry import DATASETS, MODELS, RUNNERS\n"
            "print(DATASETS.names(), MODELS.names(), RUNNERS.names())")
    rc, out, err = _cli("-c", code)
    assert rc == 0, err
    assert "'gebc'" in out and "'llmva_gebc'" in out and "'runner_base'" in out


def test_spice_warning_once_per_process_and_tokenizer_chatter_captured(caplog, capfd, monkeypatch):
    from llmva_gebc.eval import metrics

    monkeypatch.setitem(metrics._warned, "spice", False)
    monkeypatch.setattr(metrics, "find_spice_lib", lambda: None)
    refs = {"a_0": {"subject": "a red circle", "status_before": "moving left", "status_after": "still"}}
    preds = {"a_0": {"subject": "red \u2603 circle", "status_before": "moving", "status_after": "still"}}
    with caplog.at_level(logging.DEBUG, logger="llmva_gebc"):
        for _ in range(3):
            metrics.score_captions(preds, refs)
    warnings = [r for r in caplog.records if "SPICE unavailable" in r.getMessage()]
    assert len(warnings) == 1
    err = capfd.readouterr().err
    assert "PTBTokenizer tokenized" not in err  # Java's report went to the debug log instead
    assert any("PTBTokenizer" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_captured_stderr_shows_the_text_when_the_block_fails(caplog):
    from llmva_gebc.cli import captured_stderr

    with caplog.at_level(logging.DEBUG, logger="llmva_gebc"):
        with pytest.raises(subprocess.CalledProcessError):
            with captured_stderr("tool"):
                subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"], check=True)
    rec = [r for r in caplog.records if "tool said" in r.getMessage()]
    assert rec and rec[0].levelno == logging.ERROR and "boom" in rec[0].getMessage()


def test_config_diff_names_the_differing_keys(tmp_path):
    from llmva_gebc.config import config_diff, load_config, save_config

    a = load_config(REPO / "train_configs" / "tiny.yaml", ["model.llm.path=x"])
    save_config(a, tmp_path / "config.yaml")
    b = load_config(REPO / "train_configs" / "tiny.yaml", ["model.llm.path=x", "model.adapter.hidden_size=64"])
    assert config_diff(tmp_path / "config.yaml", b) == ["model.adapter.hidden_size: checkpoint 32 vs config 64"]
    assert config_diff(tmp_path / "config.yaml", a) == []


def test_unreadable_or_misplaced_paths_are_user_errors(tmp_path, capsys):
    """A file the user may not read (chmod 000; root reads it anyway, so the error is raised here) and a
    folder where a file is expected give the one error line, not a traceback."""
    from llmva_gebc import cli

    def unreadable(argv):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ann.json"))

    def folder(argv):
        open(tmp_path)  # IsADirectoryError

    assert cli.run(unreadable, []) == 2
    assert capsys.readouterr().err.strip() == f"error: [Errno 13] Permission denied: '{tmp_path / 'ann.json'}'"
    assert cli.run(folder, []) == 2
    assert capsys.readouterr().err.strip() == f"error: [Errno 21] Is a directory: '{tmp_path}'"


def test_resume_with_another_model_is_refused_and_other_changes_are_listed(tiny_cfg_factory, feats_dir,  # noqa: F811
                                                                          tmp_path, caplog):
    """Before: a resume whose config changed the model (here the dropout; also another LLM of the same width)
    trained on silently, and the run's config.yaml was overwritten by the new one."""
    from llmva_gebc.config import ConfigError
    from llmva_gebc.engine.trainer import train

    opts = tiny_options(feats_dir, tmp_path, "run.valid_splits=[]", "run.test_splits=[]", "run.run_name=r")
    run_dir = train(tiny_cfg_factory("opt", *opts, "run.max_steps=1"))
    first = (run_dir / "config.yaml").read_text()
    last = run_dir / "checkpoint_last"
    with pytest.raises(ConfigError, match=r"run.resume: this config's model differs from the run's own .*config.yaml\): "
                                          r"model.adapter.hidden_dropout_prob: checkpoint 0.1 vs config 0.3"):
        train(tiny_cfg_factory("opt", *opts, "run.max_steps=2", "model.adapter.hidden_dropout_prob=0.3",
                               f"run.resume={last}"))
    assert (run_dir / "config.yaml").read_text() == first and _steps(run_dir) == [1]  # nothing written
    with caplog.at_level(logging.WARNING, logger="llmva_gebc.train"):
        train(tiny_cfg_factory("opt", *opts, "run.max_steps=2", "run.init_lr=0.002", f"run.resume={last}"))
    assert _steps(run_dir) == [1, 2]
    warned = [r.getMessage() for r in caplog.records if "run.resume: continuing with a config" in r.getMessage()]
    assert warned and "run.init_lr: checkpoint 0.001 vs config 0.002" in warned[0] and "run.max_steps" in warned[0]
    assert (run_dir / "config.before_resume.yaml").read_text() == first  # the run's first config is kept


def test_resume_without_cfg_path_continues_with_the_runs_own_config(tiny_cfg_factory, feats_dir, tmp_path,  # noqa: F811
                                                                   caplog, monkeypatch):
    """``train.py --resume DIR`` alone reuses DIR's config.yaml (the first run's --options included), so a
    resume does not fall back to the YAML file's defaults; a schedule change is warned about."""
    import importlib

    from llmva_gebc.engine.trainer import train

    opts = tiny_options(feats_dir, tmp_path, "run.valid_splits=[]", "run.test_splits=[]", "run.run_name=r")
    run_dir = train(tiny_cfg_factory("opt", *opts, "run.max_steps=2", "run.batch_size_train=4"))
    first = (run_dir / "config.yaml").read_text()
    monkeypatch.syspath_prepend(str(REPO))
    train_py = importlib.import_module("train")
    with caplog.at_level(logging.WARNING, logger="llmva_gebc.train"):
        assert train_py.main(["--resume", str(run_dir), "--options", "run.max_steps=3"]) == 0
    assert _steps(run_dir) == [1, 2, 3]
    from omegaconf import OmegaConf

    assert OmegaConf.load(run_dir / "config.yaml").run.batch_size_train == 4  # not tiny.yaml's 8
    assert (run_dir / "config.before_resume.yaml").read_text() == first
    msgs = [r.getMessage() for r in caplog.records]
    assert any("run.max_steps: checkpoint 2 vs config 3" in m for m in msgs)
    assert any("run.max_steps changed: the learning-rate schedule is recomputed" in m for m in msgs)
    assert not any("batch size" in m for m in msgs)  # same batch size as the run: no remap warning
    # no --cfg-path and no --resume: one error line naming both ways
    assert train_py.main([]) == 2
    assert train_py.main(["--resume", str(tmp_path / "nowhere")]) == 2


def test_a_nan_loss_from_huge_features_is_one_error_line(tiny_llm_dirs, feats_dir, tmp_path, capfd):  # noqa: F811
    """Features of huge (finite) values make the loss NaN: a traceback and exit 1 before; now the one line
    naming the step and the boundaries, exit 2."""
    import numpy as np

    huge = tmp_path / "huge"
    huge.mkdir()
    for f in feats_dir.glob("*.npy"):
        np.save(huge / f.name, np.load(f) * 1e30)
    sys.path.insert(0, str(REPO))
    try:
        import train
    finally:
        sys.path.pop(0)
    opts = tiny_options(huge, tmp_path / "out", "run.valid_splits=[]", "run.test_splits=[]", "run.max_steps=2",
                        f"model.llm.path={tiny_llm_dirs['opt']}")
    capfd.readouterr()
    rc = train.main(["--cfg-path", str(REPO / "train_configs" / "tiny.yaml"), "--options", *opts])
    _one_error_line(rc, capfd.readouterr().err, "non-finite training loss at global step 0", "run.nan_policy=skip")


def test_training_or_validating_on_the_test_split_is_one_error_line(tiny_cfg_factory, feats_dir, tmp_path):  # noqa: F811
    """The test split has no captions: a ValueError traceback at the first batch before."""
    from llmva_gebc.config import ConfigError
    from llmva_gebc.engine.trainer import train

    opts = tiny_options(feats_dir, tmp_path, "run.max_steps=1", "run.test_splits=[]")
    for key in ("run.train_splits", "run.valid_splits"):
        with pytest.raises(ConfigError, match=rf"{key}=\['test'\]: split 'test' has no reference captions"):
            train(tiny_cfg_factory("opt", *opts, f"{key}=[test]", f"run.run_name={key}"))
