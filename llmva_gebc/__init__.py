"""llmva-gebc: Generic Event Boundary Captioning with a frozen LLM (LLMVA-GEBC).

Importing the package registers every dataset builder, model, processor, task, runner and LR
scheduler, through the explicit imports below (no star-imports, no import-time I/O or network).
"""
from llmva_gebc import registry  # noqa: F401
from llmva_gebc import config  # noqa: F401

# Registration: each import below runs the module's @REGISTRY.register decorators.
from llmva_gebc.data import gebc as _data_gebc  # noqa: F401  (dataset 'gebc')
from llmva_gebc.data import pretrain as _data_pretrain  # noqa: F401  (webvid, cc3m, videochat_instruct)
from llmva_gebc.data import processors as _data_processors  # noqa: F401  (clip_video_eval/train, clip_image_eval)
from llmva_gebc.engine import optim as _engine_optim  # noqa: F401  (LR schedulers)
from llmva_gebc.engine import trainer as _engine_trainer  # noqa: F401  (runner_base)
from llmva_gebc.models import llmva_gebc as _models_llmva_gebc  # noqa: F401

__version__ = "0.1.0"


def load(cfg_path, ckpt=None, options=None, device=None, **kwargs):
    """``llmva_gebc.load(cfg_path, ckpt=None, options=None, device=None) -> Captioner``.

    See :func:`llmva_gebc.api.load`; imported lazily so that ``import llmva_gebc`` stays light.
    """
    from llmva_gebc.api import load as _load

    return _load(cfg_path, ckpt=ckpt, options=options, device=device, **kwargs)
