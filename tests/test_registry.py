import pytest

import llmva_gebc  # noqa: F401  (fills the registries through its explicit imports)
from llmva_gebc.registry import DATASETS, LR_SCHEDULERS, MODELS, PROCESSORS, RUNNERS, Registry


def test_decorator_registration_and_lookup():
    reg = Registry("widget")

    @reg.register("a")
    def build_a():
        return "A"

    @reg.register()
    def build_b():
        return "B"

    assert reg.get("a")() == "A" and reg.build("build_b") == "B"
    assert reg.names() == ["a", "build_b"] and "a" in reg


def test_unknown_name_lists_registered_names():
    reg = Registry("widget")
    reg.register("alpha")(lambda: 1)
    reg.register("beta")(lambda: 2)
    with pytest.raises(KeyError, match="unknown widget 'gamma'; registered widgets: alpha, beta"):
        reg.get("gamma")


def test_duplicate_name_is_an_error():
    reg = Registry("widget")
    reg.register("x")(lambda: 1)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("x")(lambda: 2)


def test_package_import_registers_everything():
    assert "llmva_gebc" in MODELS
    assert {"gebc", "webvid", "cc3m", "videochat_instruct"} <= set(DATASETS.names())
    assert {"clip_video_eval", "clip_video_train"} <= set(PROCESSORS.names())
    assert {"linear_warmup_cosine_lr", "linear_warmup_step_lr", "constant_lr"} <= set(LR_SCHEDULERS.names())
    assert "runner_base" in RUNNERS
    with pytest.raises(KeyError, match="registered models: llmva_gebc"):
        MODELS.get("blip2_opt")


def test_unknown_name_from_a_config_is_a_user_error_naming_the_key():
    from llmva_gebc.errors import UserError
    from llmva_gebc.registry import UnknownNameError

    with pytest.raises(UnknownNameError) as e:
        LR_SCHEDULERS.get("cosine")
    assert isinstance(e.value, KeyError) and isinstance(e.value, UserError)  # one error line from every CLI
    assert str(e.value).startswith("unknown lr scheduler 'cosine' (config key run.lr_sched); registered lr schedulers: ")
