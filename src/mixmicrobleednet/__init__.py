"""MixMicrobleedNet: cerebral microbleed segmentation on T2*-weighted MRI (with T1, T2) with nnU-Net v2.

Python API::

    from mixmicrobleednet import RunOptions, run
    exit_code, results = run(Path("in"), Path("out"), RunOptions(resume=True))   # shipped models, auto device
    shipped_models()   # name -> ModelFolder (channels, path); RunOptions(model=NAME or a folder) for one
"""

__version__ = "1.0.0"

from .model import Model, PredictionSettings  # noqa: E402
from .modelfolder import read_model_folder, shipped_models  # noqa: E402
from .pipeline import OutputSettings  # noqa: E402
from .runner import RunOptions, prepare_run, run  # noqa: E402

__all__ = ["Model", "OutputSettings", "PredictionSettings", "RunOptions", "prepare_run", "read_model_folder", "run",
           "shipped_models"]
