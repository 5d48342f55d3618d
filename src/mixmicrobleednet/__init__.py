"""MixMicrobleedNet: cerebral microbleed segmentation on T1/T2/T2* MRI with nnU-Net v2.

Python API::

    from mixmicrobleednet import Model, predict_folder
    results = predict_folder(Path("in"), Path("out"))            # shipped model, auto device
"""

import os
from pathlib import Path

__version__ = "1.0.0"

#: The shipped model: $MIXMICROBLEEDNET_MODEL, else weights/ of the source checkout.
DEFAULT_MODEL_DIR = Path(os.environ.get("MIXMICROBLEEDNET_MODEL", Path(__file__).resolve().parents[2] / "weights"))

from .model import Model, PredictionSettings  # noqa: E402
from .pipeline import predict_folder, run_cases  # noqa: E402

__all__ = ["DEFAULT_MODEL_DIR", "Model", "PredictionSettings", "predict_folder", "run_cases"]
