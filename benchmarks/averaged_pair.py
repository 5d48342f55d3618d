"""Two networks' log-odds averaged (#32), as nnU-Net averages its folds, measured offline on held_out.py's
saved predictions: is the pair better than either network alone?

    nice .venv/bin/python benchmarks/averaged_pair.py --set small-validation --set default-validation \
        --set varied-validation --set raw-cortex-validation \
        --model models/phantom-t1-t2-t2s --model training/compact-t1-t2-t2s-small/model
    # then, as printed: held_out.py and mark_features.py on the pair

Both models must have predicted each set already (held_out.py, which saves the probabilities on the
input grid). Their probabilities are turned back into log-odds (clipped at 1e-7, where float32 ends),
averaged, and written as the pair's probability maps into work/held-out/SET/NAME, beside copies of
the first model's records and brain masks. The first model's folder is copied to
work/held-out/models/NAME (its checksum, so held_out.py resumes the pair's "predictions" instead of
predicting; its edge margin and mimic check, which --without-mimic-check leaves out). The resampling
back to the input grid is linear, so averaging there is averaging the network grid's log-odds, up to
the clipping. The pair's time (twice the network's) is not measured here.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from edge_rule import labelled_stems
from held_out import SETS, predictions_folder

from mixmicrobleednet import layout

REPO = Path(__file__).resolve().parents[1]
CLIP = 1e-7


def log_odds(probability: np.ndarray) -> np.ndarray:
    clipped = np.clip(probability.astype(np.float64), CLIP, 1 - CLIP)
    return np.log(clipped) - np.log1p(-clipped)


def average_set(work: Path, name: str, first: Path, second: Path, pair: Path) -> int:
    """The pair's predictions of set `name` from the two models'; the number of cases."""
    folders = [predictions_folder(work, name, model) for model in (first, second)]
    for folder in folders:
        if not (folder / "records").is_dir():
            raise SystemExit(f"{folder} holds no predictions: run held_out.py --set {name} --model {folder.name} first")
    output = predictions_folder(work, name, pair)
    shutil.rmtree(output, ignore_errors=True)
    shutil.copytree(folders[0], output)
    stems = labelled_stems(work / name / "phantoms")
    for stem in stems:
        probability = layout.seed_output_paths(stem)["probability"]
        images = [sitk.ReadImage(str(folder / probability)) for folder in folders]
        mean = sum(log_odds(sitk.GetArrayFromImage(image)) for image in images) / len(images)
        averaged = sitk.GetImageFromArray((1 / (1 + np.exp(-mean))).astype(np.float32))
        averaged.CopyInformation(images[0])
        sitk.WriteImage(averaged, str(output / probability), True)
    return len(stems)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", choices=list(SETS), required=True)
    parser.add_argument("--model", action="append", type=Path, required=True, help="two model folders")
    parser.add_argument("--name", default="averaged-pair", help="the pair's name in the tables")
    parser.add_argument("--work", type=Path, default=REPO / "work" / "held-out")
    args = parser.parse_args(argv)
    if len(args.model) != 2:
        parser.error("--model twice: the two networks to average")
    pair = args.work / "models" / args.name
    shutil.rmtree(pair, ignore_errors=True)
    shutil.copytree(args.model[0], pair)
    for name in args.set:
        print(f"{name}: {average_set(args.work, name, *args.model, pair)} cases averaged into "
              f"{predictions_folder(args.work, name, pair)}")
    sets = " ".join(f"--set {name}" for name in args.set)
    print(f"\nnice .venv/bin/python benchmarks/held_out.py {sets} --model {pair} --margins 0 2 --without-mimic-check")
    print(f"nice .venv/bin/python benchmarks/mark_features.py {sets} --model {pair}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
