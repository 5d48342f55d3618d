"""The tests' one module of shared helpers: small synthetic volumes and cases, a random-weight model
with the compact plans, a run with the CPU defaults, and the nnU-Net v1 reference run.

Tiers (pytest markers, docs/development.md "Tests"): unmarked tests are fast unit tests; `model` runs
a random-weight model on the CPU; `shipped` the shipped weights; `v1` needs nnU-Net v1
(.venv-nnunetv1); `anatomy` Colin27; `docker` a Docker engine and the image; `cluster` SLURM; `wheel`
the built wheel in a fresh venv. A plain pytest runs unit and model; run-tests.sh all.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.layout import case_stem as stem
from mixmicrobleednet.model import PredictionSettings
from mixmicrobleednet.train import write_random_model

REPO = Path(__file__).resolve().parents[1]
#: The 2021 container's nnU-Net v1 plans, carried in tests/data with their licence (MIT).
REFERENCE_PLANS = REPO / "tests" / "data" / "mixmicrobleednet_v1_plans.pkl"
FAST = PredictionSettings(use_mirroring=False)


#: Fixtures that put a test in a tier (the tests that use them need what the tier names).
_TIER_OF_FIXTURE = {"random_model": "model", "v1_run": "v1", "imported_v1": "v1", "colin27": "anatomy",
                    "atlas": "anatomy"}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, tier in _TIER_OF_FIXTURE.items():
            if fixture in item.fixturenames:
                item.add_marker(tier)


def make_image(array: np.ndarray, spacing_xyz=(0.8, 0.8, 1.2), origin=(-10.0, 5.0, 2.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def brain_volume(shape=(20, 40, 36), seed=0) -> np.ndarray:
    """A noisy ellipsoid 'brain' with a dark dot, float32."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    centre = np.array(shape) / 2
    inside = ((zz - centre[0]) / (shape[0] * 0.45)) ** 2 + ((yy - centre[1]) / (shape[1] * 0.45)) ** 2 \
        + ((xx - centre[2]) / (shape[2] * 0.45)) ** 2 < 1
    volume = (100 + 10 * rng.standard_normal(shape)) * inside
    volume[tuple(int(c) for c in centre)] = 5
    return volume.astype(np.float32)


def write_case(folder: Path, subject: str, shape=(20, 40, 36), spacing_xyz=(0.8, 0.8, 1.2), seed=0,
               channels=layout.CHANNELS, session: str | None = None, space: str = "T2S",
               extension: str = layout.NIFTI) -> dict[str, Path]:
    """One seed-layout case; returns channel -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, channel in enumerate(channels):
        paths[channel] = folder / layout.input_name(stem(subject, session, space), channel, extension)
        sitk.WriteImage(make_image(brain_volume(shape, seed + i), spacing_xyz), str(paths[channel]))
    return paths


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> Path:
    """An nnU-Net v2 model folder (compact plans) with random weights: for plumbing, not accuracy."""
    return write_random_model(tmp_path_factory.mktemp("random_model"))


@pytest.fixture(scope="session")
def colin27():
    """The Colin27 head and brain (Debian's mricron-data, installed by scripts/mricron-data.sh)."""
    from mixmicrobleednet.evaluate import surface_points
    from mixmicrobleednet.phantoms import COLIN27_DIR

    head, brain = COLIN27_DIR / "ch2.nii.gz", COLIN27_DIR / "ch2bet.nii.gz"
    assert head.is_file() and brain.is_file(), "Colin27 missing: run scripts/mricron-data.sh (apt-get install mricron-data)"
    return sitk.ReadImage(str(head), sitk.sitkFloat32), surface_points(sitk.ReadImage(str(brain)))


def run_options(model: Path, **options):
    """RunOptions for the tests: the CPU, no mirroring, plus `options`."""
    from mixmicrobleednet.runner import RunOptions

    return RunOptions(model=model, device="cpu", **{"prediction": FAST, **options})


def predict(input_dir: Path, output_dir: Path, model: Path, **options):
    """A whole run as the CLI makes it; returns the case results (exit code in .exit_code)."""
    from mixmicrobleednet.runner import run

    code, results = run(input_dir, output_dir, run_options(model, **options))
    predict.exit_code = code
    return results


def write_platform_job(seed_dir: Path, subject: str, job_dir: Path) -> Path:
    """A Grand-Challenge job folder (inputs.json + one .mha per input socket, as
    grand-challenge-forge 0.7.5 writes them) with the same images as a seed-layout case."""
    import uuid

    entries = []
    for channel, slug in layout.INPUT_SOCKETS.items():
        folder = job_dir / layout.platform_image_dir(slug)
        folder.mkdir(parents=True, exist_ok=True)
        image = sitk.ReadImage(str(seed_dir / layout.input_name(stem(subject), channel)))
        for key in image.GetMetaDataKeys():  # NIfTI header fields that MetaImage cannot hold
            image.EraseMetaData(key)
        sitk.WriteImage(image, str(folder / f"{uuid.uuid5(uuid.NAMESPACE_URL, subject + slug)}.mha"), True)
        entries.append({"file": None, "image": {"name": layout.input_name(stem(subject), channel)}, "value": None,
                        "interface": {"slug": slug, "relative_path": layout.platform_image_dir(slug),
                                      "kind": "Image", "super_kind": "Image"}})
    (job_dir / layout.PLATFORM_INPUTS_JSON).write_text(json.dumps(entries, indent=4))
    return job_dir


V1_PYTHON = REPO / ".venv-nnunetv1" / "bin" / "python"
V1_SPACING_XYZ = (0.48828101, 0.48828101, 0.80000001)  # the plans' 3d_fullres spacing: no resampling


@pytest.fixture(scope="session")
def v1_run(tmp_path_factory):
    """A v1 model (reduced width) with random weights, one patch through its network, and v1's
    inference of a brain-masked case on the model's own grid, all made by nnU-Net v1."""
    subprocess.run([str(REPO / "scripts" / "setup-nnunetv1-venv.sh")], check=True)
    work = tmp_path_factory.mktemp("v1")
    seed_dir, raw = work / "seed", []
    seed_dir.mkdir()
    for index, channel in enumerate(layout.CHANNELS):
        image = sitk.GetImageFromArray(brain_volume((56, 112, 80), seed=index))  # zero outside the "brain"
        image.SetSpacing(V1_SPACING_XYZ)
        image.SetOrigin((-10.0, 5.0, 2.0))
        sitk.WriteImage(image, str(seed_dir / layout.input_name(stem("v1case"), channel)))
        raw.append(str(work / f"v1case_{index:04d}.nii.gz"))
        sitk.WriteImage(image, raw[-1])
    run = subprocess.run([str(V1_PYTHON), str(REPO / "tests" / "nnunetv1" / "v1_reference.py"), str(REFERENCE_PLANS),
                          str(work), *raw], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return work


@pytest.fixture(scope="session")
def imported_v1(v1_run, tmp_path_factory):
    from mixmicrobleednet.v1import import import_v1

    out = tmp_path_factory.mktemp("imported")
    return import_v1(v1_run / "model" / "plans.pkl", v1_run / "model" / "all" / "model_final_checkpoint.model", out)




#: The BIDS phantom dataset's visits: three subjects, one with two sessions (the SLURM test's cohort).
BIDS_VISITS = (("01", None), ("02", "1"), ("02", "2"), ("03", None))


def write_bids_dataset(root: Path, visits=BIDS_VISITS, channels=layout.CHANNELS, shape=(20, 40, 36),
                       spacing_xyz=(0.8, 0.8, 1.2)) -> Path:
    """A small BIDS raw dataset (dataset_description.json, README, participants.tsv, per visit
    anat/ images with JSON sidecars) that bids-validator accepts; the images are brain_volume()s."""
    root.mkdir(parents=True, exist_ok=True)
    (root / layout.DATASET_DESCRIPTION).write_text(json.dumps(
        {"Name": "MixMicrobleedNet BIDS phantoms", "BIDSVersion": "1.10.1", "DatasetType": "raw",
         "License": "CC0", "Authors": ["MixMicrobleedNet tests"]}, indent=2))
    (root / "README").write_text("Synthetic phantoms for the MixMicrobleedNet tests (no real data).\n")
    subjects = sorted({subject for subject, _ in visits})
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in subjects))
    for number, (subject, session) in enumerate(visits):
        anat = root / layout.bids_anat_dir(subject, session)
        anat.mkdir(parents=True, exist_ok=True)
        for index, channel in enumerate(channels):
            name = layout.bids_image_name(subject, session, channel)
            sitk.WriteImage(make_image(brain_volume(shape, seed=10 * number + index), spacing_xyz), str(anat / name))
            (anat / name.replace(layout.BIDS_IMAGE_EXTENSIONS[0], ".json")).write_text(
                json.dumps({"MagneticFieldStrength": 3, "EchoTime": 0.02 if channel == layout.REFERENCE_CHANNEL else 0.004}))
    return root


def cases_for(input_dir: Path, model_dir: Path) -> list:
    """The seed-layout cases of `input_dir`, each given the model in `model_dir` (as the runner does)."""
    from dataclasses import replace

    from mixmicrobleednet.cases import seed_cases
    from mixmicrobleednet.modelfolder import read_model_folder

    model = read_model_folder(model_dir)
    return [replace(case, model=model) for case in seed_cases(input_dir)]
