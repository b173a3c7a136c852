"""llmva-gebc: Generic Event Boundary Captioning with a frozen LLM (LLMVA-GEBC).

``import llmva_gebc`` is light: it imports neither torch nor transformers. The registries
(:mod:`llmva_gebc.registry`) import the modules that register the builtin datasets, processors,
schedulers, runner and model on their first lookup; :func:`load` imports the model code when called.
"""
__version__ = "0.1.0"


def load(cfg_path, ckpt=None, options=None, device=None, **kwargs):
    """``llmva_gebc.load(cfg_path, ckpt=None, options=None, device=None) -> Captioner``.

    See :func:`llmva_gebc.api.load`; imported lazily so that ``import llmva_gebc`` stays light.
    """
    from llmva_gebc.api import load as _load

    return _load(cfg_path, ckpt=ckpt, options=options, device=device, **kwargs)
