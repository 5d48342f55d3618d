"""Seconds per case and peak memory of the paper's full-size network on the 192x512x512 phantom,
with and without test-time mirroring: the GPU rows of the README's performance table.

    .venv/bin/python benchmarks/paper_network_speed.py [--device cuda] [--work work/bench]
                                                       [--crop Z Y X]

The network is the 2021 plans' 3d_fullres (train.py's `mixmicrobleednet-v1`: 30.8 M parameters,
patch 96x192x128 at 0.8x0.49x0.49 mm) with random weights: its cost does not depend on the
weights. The case is the 0.8x0.49x0.49 mm phantom of predict_speed.py. Each setting predicts it
twice with one loaded model; the first time includes cuDNN's algorithm search and the CUDA
allocator's warm-up, the second is what each further case costs. `--crop` cuts the case to a
smaller centre (a quick check of the script on a CPU).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "work" / "bench")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--crop", type=int, nargs=3, metavar=("Z", "Y", "X"))
    args = parser.parse_args()
    import torch

    from mixmicrobleednet.cases import discover_cases
    from mixmicrobleednet.imaging import load_case
    from mixmicrobleednet.model import Model, PredictionSettings
    from mixmicrobleednet.train import write_random_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from predict_speed import prepare

    seed_dir, _, subjects = prepare(args.work)
    model_dir = args.work / "paper-network"
    if not (model_dir / "fold_all" / "checkpoint_final.pth").is_file():
        write_random_model(model_dir, "mixmicrobleednet-v1")
    stack = load_case(next(c for c in discover_cases(seed_dir) if c.subject == subjects[0]))
    channels = stack.array
    if args.crop:
        channels = channels[(slice(None), *(slice((n - c) // 2, (n - c) // 2 + c)
                                            for n, c in zip(channels.shape[1:], args.crop)))]
    cuda = args.device == "cuda"
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"device {device}, case {subjects[0]} "
          f"{'x'.join(map(str, channels.shape[1:]))} voxels (z, y, x), spacing {stack.spacing_zyx} mm, "
          f"paper network with random weights")
    print("| device | mirroring | first case s | each further case s | peak GPU memory GiB (allocated / reserved) |")
    print("|---|---|---|---|---|")
    for mirroring in (False, True):
        model = Model(model_dir, args.device, PredictionSettings(use_mirroring=mirroring))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds = []
        for _ in range(2):
            started = time.perf_counter()
            model.predict_probabilities(channels, stack.spacing_zyx)
            if cuda:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        memory = (f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f} / {torch.cuda.max_memory_reserved() / 2 ** 30:.1f}"
                  if cuda else f"(CPU: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.1f})")
        print(f"| {device} | {'on' if mirroring else 'off'} | {seconds[0]:.1f} | {seconds[1]:.1f} | {memory} |")
        del model
        if cuda:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
