"""Training speed (#32): training iterations per second of each configuration on a device.

    python benchmarks/train_speed.py [--device cuda] [--config compact mixmicrobleednet-v1] [--iterations 50]
                                     [--work work/train-speed] [--processes N]

Makes 4 phantoms once (seed 9, the lowres and highres3d acquisitions) and trains each configuration
from scratch with train() for two epochs of --iterations iterations each, nnU-Net's data
augmentation in --processes - 1 worker processes (default: every CPU but one). Prints, per
configuration, the seconds of the second epoch (the first holds start-up and, on a GPU, cuDNN's
search) from the final checkpoint's epoch timestamps, and training iterations per second over it
(the epoch's validation passes, min(iterations, the configuration's), are in its time). scripts/gpu-train-speed.sh runs it on a lent GPU machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", nargs="+", default=["compact"])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--work", type=Path, default=REPO / "work" / "train-speed")
    parser.add_argument("--processes", type=int, default=max(2, (os.cpu_count() or 2) - 1))
    args = parser.parse_args()
    import torch

    from mixmicrobleednet.phantoms import generate
    from mixmicrobleednet.train import CONFIGS, train

    data = args.work / "data"
    if not (data / "phantoms.csv").is_file():
        generate(data, 4, seed=9, cohorts=["lowres", "highres3d"])
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    rows = []
    for name in args.config:
        work = args.work / name
        train(data, args.work / f"{name}-model", name, device=args.device, work_dir=work, epochs=2,
              iterations_per_epoch=args.iterations, num_processes=args.processes)
        logged = torch.load(next(work.rglob("checkpoint_final.pth")), map_location="cpu",
                            weights_only=False)["logging"]
        seconds = logged["epoch_end_timestamps"][-1] - logged["epoch_start_timestamps"][-1]
        validation = min(CONFIGS[name].val_iterations_per_epoch, args.iterations)
        rows.append(f"| {device} | {name} | {args.iterations} (+{validation} validation) | {seconds:.1f} | "
                    f"{args.iterations / seconds:.2f} | {args.processes - 1} |")
        print(rows[-1], flush=True)
    print(f"torch {torch.__version__}")
    print("| device | configuration | iterations per epoch | second epoch s | iterations/s | augmentation workers |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
