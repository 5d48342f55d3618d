"""Two networks' weights averaged (#32), a "model soup": where one network was fine-tuned from the other,
the average of their weights often predicts as well as the average of their log-odds (averaged_pair.py)
at the cost of one network instead of two. Writes a model folder: the first model's folder (plans, edge
margin, mimic check, card) with the averaged weights in its checkpoint.

    .venv/bin/python benchmarks/averaged_weights.py --model models/phantom-t1-t2-t2s \
        --model training/compact-t1-t2-t2s-small/model --out work/held-out/models/averaged-weights
    # then held_out.py and mark_features.py on --out, as for any model folder

Both networks must have the same architecture and configuration (a fine-tune of one from the other).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from mixmicrobleednet import layout


def averaged_checkpoint(first: Path, second: Path, weight: float) -> dict:
    """The first model's checkpoint with weight * second's network weights + (1 - weight) * first's."""
    checkpoints = [torch.load(folder / layout.CHECKPOINT, map_location="cpu", weights_only=False)
                   for folder in (first, second)]
    for key in ("trainer_name", "inference_allowed_mirroring_axes"):
        if checkpoints[0][key] != checkpoints[1][key]:
            raise SystemExit(f"{first} and {second} differ in {key}: not two versions of one network")
    if checkpoints[0]["init_args"]["configuration"] != checkpoints[1]["init_args"]["configuration"]:
        raise SystemExit(f"{first} and {second} were trained as different configurations")
    ours, theirs = (c["network_weights"] for c in checkpoints)
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        raise SystemExit(f"{first} and {second} have different networks")
    # nnU-Net's decoder holds the encoder, so its weights appear twice in the state dict, one tensor
    # under two keys: averaged once and shared again, the checkpoint stays its size.
    done: dict[int, torch.Tensor] = {}
    weights = {}
    for key, value in ours.items():
        if value.is_floating_point():
            value = done.setdefault(value.data_ptr(), torch.lerp(value, theirs[key], weight))
        weights[key] = value
    averaged = dict(checkpoints[0])
    averaged["network_weights"] = weights
    return averaged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", type=Path, required=True, help="two model folders")
    parser.add_argument("--weight", type=float, default=0.5, help="the second network's share (default 0.5)")
    parser.add_argument("--out", type=Path, required=True, help="the averaged model folder (replaced)")
    args = parser.parse_args(argv)
    if len(args.model) != 2:
        parser.error("--model twice: the two networks to average")
    checkpoint = averaged_checkpoint(*args.model, args.weight)
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(args.model[0], args.out)
    torch.save(checkpoint, args.out / layout.CHECKPOINT)
    training = args.out / "training.json"
    if training.is_file():
        record = json.loads(training.read_text())
        record["averaged_weights"] = {"models": [str(m) for m in args.model], "second_share": args.weight}
        training.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.out}: {1 - args.weight:g} x {args.model[0]} + {args.weight:g} x {args.model[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
