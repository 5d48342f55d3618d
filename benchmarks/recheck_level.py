"""openvino-checked's recheck level: how far its bfloat16 pass is from float32, and how many tiles
each level would run again.

    .venv/bin/python benchmarks/recheck_level.py [--work work/bench] [--model models/phantom-t1-t2-t2s]
                                                 [--levels -10 -9 -8 -7 -6 -5]

On the benchmark's cases (predict_speed.prepare), each preprocessed as the tool does, the sliding
window runs twice: bfloat16 (openvino-checked's first pass) and float32 (openvino-accurate, its
recheck), mirroring off. Prints per case the tiles, the tiles a recheck at each level would run again
(those reaching a voxel whose bfloat16 microbleed log-odds exceed the level, or a neighbour of one),
the largest |bfloat16 - float32| log-odds difference in bands of the float32 value, and the lowest
bfloat16 log-odds of a voxel whose float32 probability is 0.01 or more: a level below it keeps every
such voxel float32's. Needs a CPU with bfloat16 instructions (AMX or AVX-512 BF16).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from predict_speed import prepare

from mixmicrobleednet.cases import seed_cases
from mixmicrobleednet.device import cpu_has_bfloat16
from mixmicrobleednet.imaging import load_case
from mixmicrobleednet.model import Model, PredictionSettings
from mixmicrobleednet.nnunet_glue import tiles_near

REPO = Path(__file__).resolve().parents[1]
BANDS = [(-100, -20), (-20, -10), (-10, -5), (-5, 0), (0, 100)]
LOGODDS_AT_0_01 = math.log(0.01 / 0.99)  # the log-odds of probability 0.01


@torch.inference_mode()
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "work" / "bench")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "phantom-t1-t2-t2s")
    parser.add_argument("--levels", type=float, nargs="+", default=[-10, -9, -8, -7, -6, -5])
    args = parser.parse_args()
    if not cpu_has_bfloat16():
        sys.exit("this CPU has no bfloat16 instructions: openvino-checked runs float32 alone here")
    seed_dir = prepare(args.work)[0]
    model = Model(args.model, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime="openvino-checked"))
    predictor, cpu = model.predictor, torch.device("cpu")
    bfloat16, float32 = predictor.network, predictor.recheck_network
    print("case, tiles, tiles rechecked at each level, largest |log-odds difference| per float32 band, "
          "lowest bfloat16 log-odds where float32's probability >= 0.01")
    for case in seed_cases(seed_dir):
        stack = load_case(case, tuple(model.folder.channels))
        data = torch.from_numpy(model.preprocessing.preprocess(stack.array, stack.spacing_zyx).data)
        slicers = predictor._internal_get_sliding_window_slicers(data.shape[1:])
        logodds = []
        for network in (bfloat16, float32):
            predictor.network = network
            sums = predictor._weighted_sums(data, slicers, cpu)
            logodds.append(sums[1].float() - sums[0].float())
        predictor.network = bfloat16
        fast, exact = logodds
        error = (fast - exact).abs()
        levels = " ".join(f"{level:g}:{int(tiles_near(torch.nonzero(fast > level), slicers).sum())}"
                          for level in args.levels)
        bands = " ".join(f"[{low},{high}):{float(error[(exact >= low) & (exact < high)].max()):.2f}"
                         for low, high in BANDS if ((exact >= low) & (exact < high)).any())
        likely = exact >= LOGODDS_AT_0_01
        lowest = f"{float(fast[likely].min()):.2f}" if likely.any() else "none"
        print(f"{case.case_id} tiles {len(slicers)} rechecked {levels} error {bands} lowest {lowest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
