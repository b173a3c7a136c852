"""Speed and memory options for training on one big GPU (issue 16), each a ``run.*`` config key.

* ``run.compile`` — :func:`compile_model`: ``torch.compile`` of the adapter and of the frozen LLM's
  forward, in place (``nn.Module.compile``: parameter names, checkpoints and ``state_dict`` keys are
  unchanged). The loss equals the eager path's (test: tiny model on CPU).
* ``run.fused_adamw`` — ``null`` (default): the fused AdamW kernel when every trainable parameter is on
  CUDA, the default (for-each) implementation elsewhere; ``true``/``false`` force it
  (:func:`llmva_gebc.engine.optim.build_optimizer`). Same updates as the default (test on CPU, where
  torch also has the fused kernel).
* ``run.gradient_checkpointing`` — :func:`checkpoint_frozen_layers`: the frozen LLM's decoder layers
  keep only their inputs for the backward pass and recompute the rest (for cards that cannot hold a
  13B model's activations at batch 16). Hugging Face's own switch only acts in training mode, which
  would also turn the frozen LLM's dropout on; this wraps the layers directly. Layers called with a
  KV cache (the ``cache`` shared-prefix mode, generation) run as usual: a recompute would write the
  cache twice. Same loss and gradients (test).
* ``run.share_prefix_attention`` — ``auto | dense | flex``: the packed shared-prefix layout's attention
  kernel (``models/shared_prefix.py``).
* bf16: ``run.amp: bf16`` with ``model.llm.dtype: bf16`` and ``model.encoder.precision: bf16``
  (``train_configs/gebc_opt13b_1gpu.yaml``) — bf16 wherever the original used fp16 autocast.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def checkpoint_frozen_layers(llm: nn.Module) -> int:
    """Recompute each decoder layer of ``llm`` in the backward pass instead of storing its activations.
    Returns the number of layers wrapped (0: none found, e.g. a non-Hugging Face model). Idempotent."""
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    n = 0
    for m in llm.modules():
        if not isinstance(m, GradientCheckpointingLayer) or getattr(m, "_llmva_checkpointed", False):
            continue
        inner = m.forward  # the class's (bound) forward

        def forward(*args: Any, _inner=inner, **kwargs: Any):
            uses_cache = kwargs.get("use_cache") or any(
                kwargs.get(k) is not None for k in ("cache", "past_key_values", "past_key_value", "layer_past"))
            if torch.is_grad_enabled() and not uses_cache:
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        m.forward = forward  # instance attribute: nn.Module.__call__ finds it first
        m._llmva_checkpointed = True
        n += 1
    return n


def compile_model(model: nn.Module, **kwargs: Any) -> None:
    """``torch.compile`` the adapter and the frozen LLM's forward in place (``kwargs`` go to
    ``torch.compile``, e.g. ``backend``)."""
    model.adapter.compile(**kwargs)
    model.llm.compile(**kwargs)


def apply_run_options(model: nn.Module, run) -> None:
    """Apply ``run.share_prefix_attention``, ``run.gradient_checkpointing`` and ``run.compile`` to the
    (unwrapped) model, in that order (compiling last, so it sees the wrapped layers)."""
    if hasattr(model, "set_share_prefix"):
        model.set_share_prefix(bool(run.share_prefix), attention=run.share_prefix_attention)
    if run.gradient_checkpointing:
        n = checkpoint_frozen_layers(model.llm)
        if n == 0:
            log.warning("run.gradient_checkpointing: true but %s has no Hugging Face decoder layers to wrap",
                        type(model.llm).__name__)
        if run.share_prefix and getattr(model, "share_prefix_mode", None) == "cache":
            log.warning("run.gradient_checkpointing: the 'cache' shared-prefix mode calls the LLM with a KV "
                        "cache, whose layers are not checkpointed")
    if run.compile:
        compile_model(model)


__all__ = ["checkpoint_frozen_layers", "compile_model", "apply_run_options"]
