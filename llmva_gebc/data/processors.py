"""Image processors (registered in ``PROCESSORS``): uint8 frames -> normalised float tensors.

The reference image path resizes each frame straight to 224×224 (no crop, aspect ratio not kept),
scales to [0, 1] and normalises with the CLIP mean/std. We resize with bilinear
``torch.nn.functional.interpolate`` (``antialias=True`` is an option for large downscales; off by
default, plain bilinear). ``clip_video_train`` is the same
transform: the original trains on cached features of the eval transform, and flips or crops would
change what captions such as "moving left" mean.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from llmva_gebc.registry import PROCESSORS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipVideoProcessor:
    """uint8 (T, H, W, 3) array/tensor (or one (H, W, 3) image) -> float32 (T, 3, S, S)."""

    def __init__(
        self,
        image_size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        antialias: bool = False,
        **_: Any,
    ) -> None:
        self.image_size = int(image_size)
        self.antialias = bool(antialias)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, frames) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
        if x.ndim == 3:
            x = x.unsqueeze(0)  # one image -> T = 1
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            raise ValueError(f"expected uint8 frames, got {x.dtype}")
        x = x.permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W) in [0, 1]
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=self.antialias)
        return ((x - self.mean) / self.std).contiguous()  # (T, 3, S, S)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size})"


@PROCESSORS.register("clip_video_eval")
class ClipVideoEvalProcessor(ClipVideoProcessor):
    pass


@PROCESSORS.register("clip_video_train")
class ClipVideoTrainProcessor(ClipVideoProcessor):
    pass


@PROCESSORS.register("clip_image_eval")
class ClipImageEvalProcessor(ClipVideoProcessor):
    """The same transform for still images (CC3M): (H, W, 3) -> (1, 3, S, S)."""


def build_processor(cfg: Optional[Any] = None, training: bool = False) -> ClipVideoProcessor:
    """From a ``ProcessorConfig`` node (or mapping, or None for defaults)."""

    def get(k, d):
        if cfg is None:
            return d
        return cfg.get(k, d) if isinstance(cfg, Mapping) else getattr(cfg, k, d)

    name = get("name", "clip_video_train" if training else "clip_video_eval")
    return PROCESSORS.build(name, image_size=get("image_size", 224))


__all__ = ["ClipVideoProcessor", "build_processor", "CLIP_MEAN", "CLIP_STD"]
