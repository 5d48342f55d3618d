"""How long the review app's case page takes to be ready (#33: at most 2 s for the 192x512x512 case):
from the page's request to NiiVue showing the T2* with the mask overlay and the detections listed
(`body[data-viewer=ready]`), in Debian's chromium headless (SwiftShader: WebGL on the CPU, as on a
machine without a GPU), driven by Playwright.

    .venv/bin/python benchmarks/review_page.py --work work/review-page [--shape 192 512 512] [--repeats 5]

The cases are synthetic (two): a float32 T2* scan of that shape (noise on an ellipsoid brain, 20 dark dots,
gzip-compressed as scanners' NIfTI exports are), the mask and lesion table the pipeline's own lesion
extraction makes of it, and a record. Printed: a case opened by a direct link (the app reads its scan then),
the first case opened from the cohort page (read while the rater looks at the list), the next case
(Shift+N; read while the rater worked on the first), reloads, the next detection
(a new cube when it lies outside the current one) and the whole scan (`w`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.lesions import extract_lesions

CHROMIUM = "/usr/bin/chromium"


def write_case(work: Path, shape: tuple[int, int, int], subject: str, seed: int) -> str:
    """A finished case in an output folder (seed layout) and its T2* in the input folder; the case id."""
    case_id = layout.case_stem(subject)
    output, inputs = work / "output", work / "input"
    record_path = output / layout.seed_output_paths(case_id)["record"]
    if record_path.is_file():
        return case_id
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = sum(((axis - n / 2) / (0.45 * n)) ** 2 for axis, n in zip((zz, yy, xx), shape)) < 1
    t2s = (rng.normal(100, 10, shape) * inside).astype(np.float32)
    probabilities = np.zeros(shape, np.float32)
    for centre in rng.integers(np.array(shape) // 4, 3 * np.array(shape) // 4, size=(20, 3)):
        box = tuple(slice(c - 1, c + 2) for c in centre)
        t2s[box], probabilities[box] = 10, 0.9
    reference = sitk.GetImageFromArray(t2s)
    reference.SetSpacing((0.49, 0.49, 0.8))
    lesions = extract_lesions(probabilities, reference)
    paths = layout.seed_output_paths(case_id)
    t2s_name = layout.input_name(case_id, layout.REFERENCE_CHANNEL)
    inputs.mkdir(parents=True, exist_ok=True)
    (output / layout.IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(reference, str(inputs / t2s_name), True)
    mask = sitk.GetImageFromArray(lesions.mask)
    mask.CopyInformation(reference)
    sitk.WriteImage(mask, str(output / paths["mask"]), True)
    lesions.with_world().to_csv(output / paths["lesions"], index=False, float_format="%.3f")
    record_path.parent.mkdir(exist_ok=True)
    record_path.write_text(json.dumps({
        "record_version": 1, "case_id": case_id, "subject": subject, "session": None, "status": "ok", "error_messages": [],
        "inputs": [{"channel": layout.REFERENCE_CHANNEL, "file": t2s_name, "size": 1, "mtime_ns": 1}],
        "model": {"name": "none"}, "regions": None, "microbleed_count": lesions.count,
        "outputs": {kind: paths[kind] for kind in ("mask", "lesions")}}))
    return case_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--shape", type=int, nargs=3, default=(192, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    cases = [write_case(args.work, tuple(args.shape), subject, seed)
             for seed, subject in enumerate(("big1", "big2", "big3"))]
    print(f"cases {', '.join(cases)} {tuple(args.shape)} ready in {args.work} ({time.perf_counter() - started:.0f} s)")

    from playwright.sync_api import sync_playwright

    server = subprocess.Popen([sys.executable, "-m", "mixmicrobleednet.cli", "review", str(args.work / "output"),
                               "-i", str(args.work / "input"), "--rater", "bench", "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        address = re.search(r"http://127\.0\.0\.1:\d+/", server.stdout.readline()).group(0)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                 args=["--enable-unsafe-swiftshader", "--use-angle=swiftshader"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(300_000)

            def ready(action, navigates: bool = True) -> float:
                begun = time.perf_counter()
                if navigates:
                    with page.expect_navigation():
                        action()
                else:
                    action()
                page.wait_for_selector("body[data-viewer=ready]")
                return time.perf_counter() - begun

            cold = ready(lambda: page.goto(f"{address}cases/{cases[2]}"))  # the app has read nothing of it
            page.goto(address)  # as a rater starts: the cohort page, then its first case
            time.sleep(3)
            first = ready(lambda: page.click("#cases tbody tr:first-child a"))  # the first in the rater's order
            time.sleep(5)  # a rater's first decisions: the next case is read meanwhile
            following = ready(lambda: page.keyboard.press("Shift+N"))
            again = [ready(page.reload) for _ in range(args.repeats)]
            detection = ready(lambda: page.keyboard.press("j"), navigates=False)
            whole = ready(lambda: page.keyboard.press("w"), navigates=False)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    print(f"case page ready (target: at most 2 s): by a direct link, the scan not read yet {cold:.2f} s; the first "
          f"case from the cohort page {first:.2f} s; the next case (Shift+N) {following:.2f} s; reloaded: median "
          f"{statistics.median(again):.2f} s of {args.repeats}")
    print(f"next detection {detection:.2f} s; whole scan (w) {whole:.2f} s")


if __name__ == "__main__":
    main()
