import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from llmva_gebc.models import keymaps
from llmva_gebc.models.adapter import boundary_sine_embedding
from llmva_gebc.models.encoder import build_encoder


def _frames(n=3, size=224, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_encoder_shapes_and_reference_path(tiny_cfg):
    enc = build_encoder(tiny_cfg.model.encoder)
    x = _frames()
    out = enc(x)
    assert out.shape == (3, tiny_cfg.model.encoder.num_query_tokens, tiny_cfg.model.encoder.qformer.hidden_size)
    assert not any(p.requires_grad for p in enc.parameters())
    # Same as the stock HF modules chained: Blip2VisionModel (post_layernorm = ln_vision) → Q-Former.
    with torch.no_grad():
        img = enc.vision(pixel_values=x).last_hidden_state
        ref = enc.qformer(query_embeds=enc.query_tokens.expand(3, -1, -1), encoder_hidden_states=img).last_hidden_state
    torch.testing.assert_close(out, ref)
    # Random weights are a function of the config (extraction and captioning agree).
    torch.testing.assert_close(build_encoder(tiny_cfg.model.encoder)(x), out)


def test_lavis_checkpoints_load_through_converter(tiny_cfg, tmp_path, monkeypatch):
    ecfg = tiny_cfg.model.encoder
    src = build_encoder(ecfg)
    vit = keymaps.eva_vit_to_lavis({k: v for k, v in src.vision.state_dict().items() if not k.startswith("post_layernorm")})
    n = ecfg.vision.num_hidden_layers
    # EVA-CLIP-g has one more block than BLIP-2 uses: the converter must drop it.
    for k in [k for k in vit if k.startswith(f"blocks.{n - 1}.")]:
        vit[k.replace(f"blocks.{n - 1}.", f"blocks.{n}.")] = torch.randn_like(vit[k])
    assert "blocks.0.attn.q_bias" in vit and "blocks.0.attn.v_bias" in vit
    torch.save(vit, tmp_path / "eva_vit_g.pth")
    qf = {"Qformer." + keymaps.qformer_to_lavis(k): v for k, v in src.qformer.state_dict().items()}
    assert "Qformer.bert.encoder.layer.0.crossattention.self.key.weight" in qf
    qf["Qformer.bert.embeddings.word_embeddings.weight"] = torch.randn(10, 32)  # text branch: ignored
    qf["Qformer.bert.encoder.layer.0.intermediate.dense.weight"] = torch.randn(64, 32)
    qf["Qformer.bert.embeddings.position_ids"] = torch.arange(8)[None]
    qf["query_tokens"] = src.query_tokens.detach().clone()
    qf["ln_vision.weight"] = src.vision.post_layernorm.weight.detach().clone()
    qf["ln_vision.bias"] = src.vision.post_layernorm.bias.detach().clone()
    torch.save({"model": qf}, tmp_path / "blip2_pretrained_flant5xxl.pth")
    cfg = OmegaConf.merge(ecfg, {"weights": "lavis", "seed": 7, "eva_vit_path": str(tmp_path / "eva_vit_g.pth"),
                                 "qformer_path": str(tmp_path / "blip2_pretrained_flant5xxl.pth")})
    from llmva_gebc.models.encoder import FrozenImageEncoder

    built_on, real_init = [], FrozenImageEncoder.__init__

    def spy(self, *a, **kw):  # where the modules are constructed (and so randomly initialised)
        real_init(self, *a, **kw)
        built_on.append(self.query_tokens.device.type)

    monkeypatch.setattr(FrozenImageEncoder, "__init__", spy)
    dst = build_encoder(cfg)
    assert built_on == ["meta"]  # no random initialisation for weights the checkpoint overwrites
    assert all(p.device.type == "cpu" for p in dst.parameters())
    x = _frames(2)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    build_encoder(ecfg)  # weights: none: the seeded random initialisation, on the real device
    assert built_on == ["meta", "cpu"]


def test_lavis_missing_key_is_reported(tiny_cfg, tmp_path):
    ecfg = tiny_cfg.model.encoder
    src = build_encoder(ecfg)
    vit = keymaps.eva_vit_to_lavis(src.vision.state_dict())
    del vit["blocks.0.mlp.fc1.weight"]
    torch.save(vit, tmp_path / "vit.pth")
    torch.save({"model": {"ln_vision.weight": torch.ones(32), "ln_vision.bias": torch.zeros(32)}}, tmp_path / "q.pth")
    cfg = OmegaConf.merge(ecfg, {"weights": "lavis", "eva_vit_path": str(tmp_path / "vit.pth"),
                                 "qformer_path": str(tmp_path / "q.pth")})
    with pytest.raises(KeyError, match="encoder.layers.0.mlp.fc1.weight"):
        build_encoder(cfg)


def _save_hf_dir(src, ecfg, tmp_path):
    import json

    from safetensors.torch import save_file

    sd = {f"vision_model.{k}": v for k, v in src.vision.state_dict().items()}
    sd.update({f"qformer.{k}": v for k, v in src.qformer.state_dict().items()})
    sd["query_tokens"] = src.query_tokens.detach().clone()
    sd["language_projection.weight"] = torch.zeros(4, 32)  # not ours: ignored
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "vision_config": src.vision.config.to_dict(), "qformer_config": src.qformer.config.to_dict(),
        "num_query_tokens": ecfg.num_query_tokens}))


def test_checkpoint_goes_straight_into_the_final_dtypes(tiny_cfg, tmp_path, monkeypatch):
    """precision bf16: the ViT trunk is allocated in bf16 (never an fp32 copy first), ln_vision, the
    Q-Former and the query tokens in fp32; the values equal an fp32 load converted afterwards."""
    from llmva_gebc.models.encoder import FrozenImageEncoder

    ecfg = tiny_cfg.model.encoder
    src = build_encoder(ecfg)
    _save_hf_dir(src, ecfg, tmp_path)
    allocated, real = {}, FrozenImageEncoder.to_empty

    def spy(self, *a, **kw):
        allocated.update({k: v.dtype for k, v in self.state_dict().items()})
        return real(self, *a, **kw)

    monkeypatch.setattr(FrozenImageEncoder, "to_empty", spy)
    dst = build_encoder(OmegaConf.merge(ecfg, {"weights": "hf", "hf_dir": str(tmp_path), "precision": "bf16"}))
    src.set_precision(torch.bfloat16)  # the earlier path: fp32 first, converted after the load
    want = src.state_dict()
    got = dst.state_dict()
    assert allocated["vision.encoder.layers.0.mlp.fc1.weight"] == torch.bfloat16
    assert allocated["vision.embeddings.patch_embedding.weight"] == torch.bfloat16
    assert allocated["vision.post_layernorm.weight"] == torch.float32
    assert {allocated[k] for k in allocated if k.startswith("qformer.") and got[k].is_floating_point()} == {torch.float32}
    assert allocated["query_tokens"] == torch.float32
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_hf_blip2_directory(tiny_cfg, tmp_path):
    ecfg = tiny_cfg.model.encoder
    src = build_encoder(ecfg)
    _save_hf_dir(src, ecfg, tmp_path)
    dst = build_encoder(OmegaConf.merge(ecfg, {"weights": "hf", "hf_dir": str(tmp_path), "seed": 5}))
    x = _frames(1)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_boundary_sine_embedding_matches_formula():
    H = 16
    ref = torch.tensor([[0.3, 0.5], [0.9, 0.05]], dtype=torch.float64)
    out = boundary_sine_embedding(ref, H)
    assert out.shape == (2, 1, H) and out.dtype == torch.float32
    n = H // 2
    expected = np.zeros((2, H))
    for b in range(2):
        for c in range(2):
            p = 1 / (1 + math.exp(-ref[b, c].item())) * 2 * math.pi
            for i in range(n):
                dim_t = float(np.float32(10000 ** (2 * (i // 2) / n)))
                v = p / dim_t
                # even channels sin, odd channels cos, interleaved [sin0, cos1, sin2, cos3, ...]
                expected[b, c * n + i] = math.sin(v) if i % 2 == 0 else math.cos(v)
    np.testing.assert_allclose(out[:, 0].numpy(), expected, rtol=0, atol=1e-6)
