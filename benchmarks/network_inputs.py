"""Each labelled case's channels as the pipeline hands them to the network (imaging.load_case: T1/T2
registered onto the T2* grid, the brain extracted, every channel masked), written as a
skull-stripped seed-layout folder with the labels linked beside them.

    .venv/bin/python benchmarks/network_inputs.py --cases work/raw-scans/raw --out work/raw-scans-stacked

Registration and brain extraction then run once: several models can be compared on raw scans with
`predict --fast --no-qc --no-regions` (checked: the same microbleed masks, voxel for voxel, as
`predict` on the raw folder), and a model can be fine-tuned on exactly what it meets on raw scans.
Resumable: a case already written is skipped; a case without a label, or one that fails, is
named and skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.imaging import CaseError, load_case
from mixmicrobleednet.train import training_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, required=True, help="a seed-layout folder with labels")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # training_cases names the unlabelled cases
    args.out.mkdir(parents=True, exist_ok=True)
    for case, label in training_cases(args.cases):
        written = args.out / label.name
        if written.exists():
            continue
        try:
            stack = load_case(case)
        except CaseError as error:
            print(f"{case.case_id}: {error}, skipped", flush=True)
            continue
        for channel in layout.CHANNELS:
            sitk.WriteImage(stack.channel_image(channel), str(args.out / layout.input_name(case.case_id, channel)), True)
        os.symlink(label.resolve(), written)  # last: a case with its label linked is complete
        print(f"{case.case_id}: {stack.brain.source}, brain {stack.brain.volume_ml:.0f} ml; "
              + "; ".join(f"{k}: {v}" for k, v in stack.alignment.items()), flush=True)


if __name__ == "__main__":
    main()
