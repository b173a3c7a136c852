import pytest
import torch

from llmva_gebc.models import build_model, keymaps
from llmva_gebc.models.checkpoint import (CheckpointMismatchError, convert_original, load_trainable,
                                          save_trainable)
from tests.conftest import make_batch

OTHER = "model.adapter.other_feats=[{name: a, dim: 6}, {name: b, dim: 10}]"


def _original_layout(model, with_extras=True):
    """Our trainable weights laid out with the ORIGINAL key names and shapes (inverse key map)."""
    sd = keymaps.adapter_to_original(model.trainable_state_dict(), proj_name="opt_proj")
    if with_extras:  # what the original's checkpoint_best.pth also carries
        sd["opt_model.lm_head.weight"] = model.llm.get_output_embeddings().weight.detach().clone()
        sd["video_Qformer.bert.embeddings.position_ids"] = torch.arange(512)[None]
        sd["other_feat_Qformer.bert.embeddings.position_ids"] = torch.arange(512)[None]
    return {"model": sd, "epoch": 3, "config": {"note": "original"}}


def test_original_key_names(tiny_cfg_factory):
    model = build_model(tiny_cfg_factory("opt", OTHER).model)
    keys = set(_original_layout(model, with_extras=False)["model"])
    for k in ["opt_proj.weight", "video_query_tokens", "video_frame_position_embedding.weight",
              "temporal_pos_trans.weight", "temporal_pos_trans_norm.bias",
              "video_Qformer.bert.embeddings.LayerNorm.weight",
              "video_Qformer.bert.encoder.layer.1.attention.self.query.weight",
              "video_Qformer.bert.encoder.layer.0.crossattention.self.value.bias",
              "video_Qformer.bert.encoder.layer.0.crossattention.output.LayerNorm.weight",
              "video_Qformer.bert.encoder.layer.0.intermediate_query.dense.weight",
              "video_Qformer.bert.encoder.layer.0.output_query.LayerNorm.bias",
              "other_feat_query_tokens", "other_feat_position_embedding.weight", "other_feat_linear.weight",
              "other_feat_temporal_pos_trans.weight", "other_feat_temporal_pos_trans_norm.weight",
              "other_feat_Qformer.bert.encoder.layer.1.crossattention.self.key.weight"]:
        assert k in keys, k
    assert all(k.split(".")[0] in {"opt_proj", "video_query_tokens", "video_frame_position_embedding",
                                   "temporal_pos_trans", "temporal_pos_trans_norm", "video_Qformer",
                                   "other_feat_query_tokens", "other_feat_position_embedding", "other_feat_linear",
                                   "other_feat_temporal_pos_trans", "other_feat_temporal_pos_trans_norm",
                                   "other_feat_Qformer"} for k in keys)


def test_original_state_dict_gives_identical_loss_and_generations(tiny_cfg_factory, tmp_path):
    cfg = tiny_cfg_factory("opt", OTHER)
    torch.manual_seed(0)
    src = build_model(cfg.model).eval()
    torch.save(_original_layout(src), tmp_path / "checkpoint_best.pth")
    torch.manual_seed(123)  # a differently initialised model
    dst = build_model(cfg.model).eval()
    batch = make_batch(cfg.model, 4, seed=7)
    with torch.no_grad():
        assert not torch.equal(src(batch)["loss"], dst(batch)["loss"])
        missing, unexpected = load_trainable(dst, tmp_path / "checkpoint_best.pth")
        assert missing == [] and unexpected == []
        assert src(batch)["loss"].item() == dst(batch)["loss"].item()
    assert src.generate(batch, max_new_tokens=6) == dst.generate(batch, max_new_tokens=6)
    # The converter CLI writes ours; loading that is the same.
    out = convert_original(tmp_path / "checkpoint_best.pth", tmp_path / "converted")
    third = build_model(cfg.model).eval()
    load_trainable(third, out.parent)
    for k, v in src.trainable_state_dict().items():
        assert torch.equal(v, third.trainable_state_dict()[k]), k


def test_save_load_round_trip_is_exact(tiny_cfg_factory, tmp_path):
    cfg = tiny_cfg_factory("opt")
    a = build_model(cfg.model)
    path = save_trainable(a, tmp_path / "ck")
    assert path.name == "model.safetensors"
    torch.manual_seed(99)
    b = build_model(cfg.model)
    load_trainable(b, tmp_path / "ck")
    sa, sb = a.trainable_state_dict(), b.trainable_state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_partial_load_needs_opt_in(tiny_cfg_factory, tmp_path):
    """Video-LLaMA weights (video branch + llama_proj only) fail without allow_partial, listing missing keys."""
    cfg = tiny_cfg_factory("opt")
    src = build_model(cfg.model)
    full = keymaps.adapter_to_original(src.trainable_state_dict(), proj_name="llama_proj")
    videollama = {k: v for k, v in full.items() if k.startswith(("video_Qformer", "video_query_tokens",
                                                                 "video_frame_position_embedding", "llama_proj"))}
    torch.save({"model": videollama}, tmp_path / "finetune-vicuna13b-v2.pth")
    dst = build_model(cfg.model)
    with pytest.raises(CheckpointMismatchError) as e:
        load_trainable(dst, tmp_path / "finetune-vicuna13b-v2.pth")
    assert "adapter.temporal_pos_trans.weight" in str(e.value) and "allow_partial_load" in str(e.value)
    missing, _ = load_trainable(dst, tmp_path / "finetune-vicuna13b-v2.pth", allow_partial=True)
    assert set(missing) == {"adapter.temporal_pos_trans.weight", "adapter.temporal_pos_trans.bias",
                            "adapter.temporal_pos_trans_norm.weight", "adapter.temporal_pos_trans_norm.bias"}
    assert torch.equal(dst.adapter.proj.weight, src.adapter.proj.weight)


def test_model_checkpoint_config_key(tiny_cfg_factory, tmp_path):
    cfg = tiny_cfg_factory("opt")
    a = build_model(cfg.model)
    save_trainable(a, tmp_path / "ck")
    b = build_model(tiny_cfg_factory("opt", f"model.checkpoint={tmp_path / 'ck'}").model)
    assert torch.equal(a.adapter.proj.weight, b.adapter.proj.weight)
