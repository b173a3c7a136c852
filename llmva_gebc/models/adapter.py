"""The trainable adapter of LLMVA-GEBC (everything between the frozen image path and the frozen LLM).

Main branch: frame position embedding + 32 video queries (+ the boundary embedding) → 2-layer video
Q-Former (cross-attention in every layer) → shared projection into the LLM. Optional other-feature
branch: per-step features → linear → position embedding → its own 2-layer Q-Former with 8 queries
(+ its own boundary embedding) → the same projection. Module names follow the original checkpoint
(see ``keymaps.adapter_from_original``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel


def boundary_sine_embedding(ref: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """DETR-style sine embedding of the reference points, as the original computes it.

    ref: (B, 2) [timestamp/duration, (next-prev)/duration], float64 as the data pipeline gives it.
    ``sigmoid(ref)·2π`` (the sigmoid is the original's, kept), divided by ``dim_t`` (float32, as in the
    original), sin on even / cos on odd channels, interleaved; coordinate 0 first. Computed in the
    dtype of ``ref`` (float64 → float64) and cast to float32 at the end. Returns (B, 1, H).
    """
    n = hidden_size // 2
    dim_t = torch.arange(n, dtype=torch.float32, device=ref.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="trunc") / n)  # (H/2,)
    p = ref.sigmoid() * (2 * math.pi)  # (B, 2)
    pos = p[:, :, None] / dim_t  # (B, 2, H/2), promoted to ref's dtype
    pos = torch.stack((pos[:, :, 0::2].sin(), pos[:, :, 1::2].cos()), dim=3).flatten(2)  # (B, 2, H/2)
    return pos.reshape(pos.shape[0], 1, -1).float()  # (B, 1, H)


def _qformer(hidden: int, heads: int, inter: int, layers: int, eps: float, hdrop: float, adrop: float,
             init_range: float) -> Blip2QFormerModel:
    """A query-only BERT with cross-attention in every layer (``cross_attention_frequency=1``)."""
    return Blip2QFormerModel(Blip2QFormerConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter,
        cross_attention_frequency=1, encoder_hidden_size=hidden, layer_norm_eps=eps,
        hidden_dropout_prob=hdrop, attention_probs_dropout_prob=adrop, initializer_range=init_range,
    ))


class GEBCAdapter(nn.Module):
    """q_tokens (B, T, Q, H), ref (B, 2)[, other (B, S, sum_d)] → visual tokens (B, 32[+8], D)."""

    def __init__(self, llm_hidden_size: int, hidden_size: int = 768, num_attention_heads: int = 12,
                 intermediate_size: int = 3072, num_layers: int = 2, num_query_tokens: int = 32,
                 max_frame_pos: int = 32, layer_norm_eps: float = 1e-12, hidden_dropout_prob: float = 0.1,
                 attention_probs_dropout_prob: float = 0.1, initializer_range: float = 0.02,
                 other_feat_dims: Sequence[int] = (), other_num_query_tokens: int = 8,
                 other_max_pos: int = 128) -> None:
        super().__init__()
        H = hidden_size
        qf = dict(hidden=H, heads=num_attention_heads, inter=intermediate_size, layers=num_layers,
                  eps=layer_norm_eps, hdrop=hidden_dropout_prob, adrop=attention_probs_dropout_prob,
                  init_range=initializer_range)
        self.hidden_size = H
        self.video_frame_position_embedding = nn.Embedding(max_frame_pos, H)
        self.video_query_tokens = nn.Parameter(torch.empty(1, num_query_tokens, H).normal_(0, initializer_range))
        self.video_qformer = _qformer(**qf)
        # Named as in the original checkpoint: temporal_pos_trans(_norm).
        self.temporal_pos_trans = nn.Linear(H, H)
        self.temporal_pos_trans_norm = nn.LayerNorm(H)
        self.other_feat_dims = list(other_feat_dims)
        if self.other_feat_dims:
            self.other_feat_linear = nn.Linear(sum(self.other_feat_dims), H)
            self.other_feat_position_embedding = nn.Embedding(other_max_pos, H)
            self.other_feat_query_tokens = nn.Parameter(
                torch.empty(1, other_num_query_tokens, H).normal_(0, initializer_range))
            self.other_feat_qformer = _qformer(**qf)
            self.other_feat_temporal_pos_trans = nn.Linear(H, H)
            self.other_feat_temporal_pos_trans_norm = nn.LayerNorm(H)
        self.proj = nn.Linear(H, llm_hidden_size)  # the original's opt_proj / llama_proj

    @property
    def num_visual_tokens(self) -> int:
        n = self.video_query_tokens.shape[1]
        return n + (self.other_feat_query_tokens.shape[1] if self.other_feat_dims else 0)

    def _boundary(self, ref: torch.Tensor, trans: nn.Linear, norm: nn.LayerNorm) -> torch.Tensor:
        pos = boundary_sine_embedding(ref, self.hidden_size).to(trans.weight.dtype)  # (B, 1, H)
        return norm(trans(pos))  # (B, 1, H)

    def encode_video(self, q_tokens: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        B, T, Q, H = q_tokens.shape
        dtype = self.video_query_tokens.dtype
        pos = self.video_frame_position_embedding(torch.arange(T, device=q_tokens.device))  # (T, H)
        x = q_tokens.to(dtype) + pos[None, :, None, :]  # (B, T, Q, H)
        x = x.reshape(B, T * Q, H)  # (B, T*Q, H)
        queries = self.video_query_tokens.expand(B, -1, -1) + self._boundary(
            ref, self.temporal_pos_trans, self.temporal_pos_trans_norm)  # (B, 32, H)
        out = self.video_qformer(query_embeds=queries, encoder_hidden_states=x).last_hidden_state
        return out  # (B, 32, H)

    def encode_other(self, other: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        B, S, _ = other.shape
        x = self.other_feat_linear(other.to(self.other_feat_linear.weight.dtype))  # (B, S, H)
        x = x + self.other_feat_position_embedding(torch.arange(S, device=other.device))[None]  # (B, S, H)
        queries = self.other_feat_query_tokens.expand(B, -1, -1) + self._boundary(
            ref, self.other_feat_temporal_pos_trans, self.other_feat_temporal_pos_trans_norm)  # (B, 8, H)
        return self.other_feat_qformer(query_embeds=queries, encoder_hidden_states=x).last_hidden_state  # (B, 8, H)

    def forward(self, q_tokens: torch.Tensor, ref: torch.Tensor,
                other: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden = self.encode_video(q_tokens, ref)  # (B, 32, H)
        if self.other_feat_dims:
            if other is None:
                raise ValueError("the adapter has an other-feature branch "
                                 f"(dims {self.other_feat_dims}) but the batch has no 'other_feats'")
            hidden = torch.cat([hidden, self.encode_other(other, ref)], dim=1)  # (B, 40, H)
        return self.proj(hidden)  # (B, 32[+8], D)
