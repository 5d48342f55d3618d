"""How close to the threshold a network's voxels lie (#37): why a random-weight network's masks differ
between runtimes that a trained network's do not.

    .venv/bin/python benchmarks/threshold_margin.py [--case work/gpu] [--crop Z Y X]

On the big phantom of gpu_check.py (CASE/input), cropped at its centre (default 96x192x128: one tile
of the 2021 network), runs on the CPU (float32, no mirroring) the shipped compact model and the 2021
plans' network with random weights (train.write_random_model) and prints, per network, the voxels
whose microbleed log-odds lie within 1e-4, 1e-3 and 1e-2 of the threshold (0, probability 0.5) and
the mask's size. Runtimes that round differently (float16 autocast on a GPU, another batch size or
kernel) move log-odds by about 1e-3: voxels that close may land on either side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MARGINS = (1e-4, 1e-3, 1e-2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=REPO / "work" / "gpu")
    parser.add_argument("--crop", type=int, nargs=3, default=(96, 192, 128), metavar=("Z", "Y", "X"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_check import big_phantom, centre_crop

    from mixmicrobleednet.cases import seed_cases
    from mixmicrobleednet.imaging import load_case
    from mixmicrobleednet.model import Model, PredictionSettings
    from mixmicrobleednet.train import write_random_model

    stack = load_case(seed_cases(big_phantom(args.case))[0])
    channels = centre_crop(stack.array, args.crop)
    paper_dir = args.case / "paper-network"
    if not (paper_dir / "fold_all" / "checkpoint_final.pth").is_file():
        write_random_model(paper_dir, "mixmicrobleednet-v1")
    print(f"crop {'x'.join(map(str, channels.shape[1:]))} voxels (z, y, x) of {stack.array.shape[1:]}; "
          f"{int(np.prod(channels.shape[1:]))} voxels")
    print("| network | voxels within 1e-4 / 1e-3 / 1e-2 of the threshold (log-odds) | mask voxels |")
    print("|---|---|---|")
    for name, folder in (("shipped compact model", REPO / "models" / "phantom-t1-t2-t2s"),
                         ("2021 plans' network, random weights", paper_dir)):
        model = Model(folder, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime="torch"))
        probability = model.predict_probabilities(channels, stack.spacing_zyx).astype(np.float64)
        inside = (probability > 0) & (probability < 1)
        log_odds = np.full(probability.shape, np.inf)
        log_odds[inside] = np.log(probability[inside]) - np.log1p(-probability[inside])
        near = " / ".join(str(int(np.count_nonzero(np.abs(log_odds) < m))) for m in MARGINS)
        print(f"| {name} | {near} | {int(np.count_nonzero(probability > 0.5))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
