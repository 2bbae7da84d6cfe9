"""GS-Reasoner in the house style of transformers' model folders.

    from gs_reasoner_ros.model import GSReasonerConfig, GSReasonerForCausalLM, IMAGE_TOKEN_INDEX

Names are imported on first use, so `import gs_reasoner_ros.model.<submodule>` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "IMAGE_TOKEN_INDEX": "configuration",
    "GSReasonerConfig": "configuration",
    "GSReasonerForCausalLM": "modeling",
    "GenerationOutput": "modeling",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
