"""MixMicrobleedNet: cerebral microbleed segmentation on T2*-weighted MRI (with T1, T2) with nnU-Net v2.

Python API::

    from mixmicrobleednet import RunOptions, run
    exit_code, results = run(Path("in"), Path("out"), RunOptions(resume=True))   # shipped models, auto device
    shipped_models()   # name -> ModelFolder (channels, path); RunOptions(model=NAME or a folder) for one

The names load their modules when first used, so `import mixmicrobleednet` (and `--help`) pays for
no imaging library.
"""

import importlib

__version__ = "1.0.0"

_EXPORTS = {"Model": "model", "PredictionSettings": "model", "read_model_folder": "modelfolder",
            "shipped_models": "modelfolder", "OutputSettings": "report", "RunOptions": "runner",
            "prepare_run": "runner", "run": "runner"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
