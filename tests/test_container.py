"""The CPU image, locked down as Grand-Challenge runs it, on phantoms of the three VALDO grids.

Needs a Docker engine and the image mixmicrobleednet:cpu (./test.sh builds both); run-tests.sh
runs these after test.sh. Select them out with `-m "not docker"` on machines without Docker.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.layout import case_stem as stem
from mixmicrobleednet.phantoms import generate

from conftest import predict, write_bids_dataset, write_case, write_platform_job

pytestmark = [pytest.mark.docker]
IMAGE = "mixmicrobleednet:cpu"
REPO = Path(__file__).resolve().parents[1]
LOCKED = ["--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp", "--security-opt", "no-new-privileges"]


def docker(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def image():
    if docker("image", "inspect", IMAGE).returncode != 0:
        pytest.fail(f"{IMAGE} is not built: run ./test.sh (or ./build.sh --cpu --offline) first")
    return IMAGE


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """One phantom per acquisition: 0.8x0.49x0.49, 3.5x0.45x0.45 and 3x1x1 mm."""
    folder = tmp_path_factory.mktemp("cohorts")
    generate(folder, 3, seed=4)
    for label in folder.glob("*_CMB.nii.gz"):
        label.unlink()
    folder.chmod(0o755)  # pytest makes 0700 folders; the image's user is not their owner
    return folder


def run_container(image, input_dir: Path, output_dir: Path, *mounts: str, options: tuple[str, ...] = ()
                  ) -> subprocess.CompletedProcess:
    output_dir.mkdir(mode=0o777)
    output_dir.chmod(0o777)
    return docker("run", *LOCKED, "-v", f"{input_dir}:/input:ro", "-v", f"{output_dir}:/output", *mounts, image, "--fast",
                  *options)


def readable_by_the_image_user(folder: Path) -> Path:
    """pytest makes 0700 folders; the image's non-root user owns none of them."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def assert_masks_on_t2s_grids(input_dir: Path, output_dir: Path, subjects):
    for subject in subjects:
        mask = sitk.ReadImage(str(layout.prediction_path(output_dir, stem(subject))))
        t2s = sitk.ReadImage(str(input_dir / layout.input_name(stem(subject), "T2S")))
        assert (mask.GetSize(), mask.GetSpacing(), mask.GetOrigin(), mask.GetDirection()) == \
               (t2s.GetSize(), t2s.GetSpacing(), t2s.GetOrigin(), t2s.GetDirection())
        assert mask.GetPixelID() == sitk.sitkUInt8


def test_runs_as_non_root(image):
    assert docker("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip() != "0"


def test_runs_as_apptainer_runs_it(image, tmp_path):
    """Apptainer's conditions with Docker: the caller's arbitrary user id (no passwd entry), a
    read-only image, no writable HOME, started in another folder than WORKDIR, nothing from the
    host's environment; the shipped case gives the expected outputs."""
    output = tmp_path / "out"
    output.mkdir(mode=0o777)
    output.chmod(0o777)
    run = docker("run", *LOCKED, "-u", "12345:12345", "-e", "HOME=/nonexistent", "-w", "/",
                 "-v", f"{REPO / 'test' / 'input'}:/input:ro", "-v", f"{output}:/output", image, "--fast",
                 env={"PATH": os.environ["PATH"]})
    assert run.returncode == 0, run.stderr[-3000:]
    from mixmicrobleednet.regression import compare

    assert compare(REPO / "test" / "expected", output) == []


def test_bids_app_as_apptainer_runs_it_gives_the_clis_masks(image, tmp_path):
    """`IMAGE BIDS_DIR OUTPUT_DIR participant|group` under Apptainer's conditions (as above) writes
    the same masks as `mixmicrobleednet bids` with the same (shipped) weights, and names the image."""
    raw = readable_by_the_image_user(write_bids_dataset(tmp_path / "raw", visits=(("01", None), ("02", "1"))))
    output = tmp_path / "out"
    output.mkdir(mode=0o777)
    output.chmod(0o777)
    mounts = ["-v", f"{raw}:/data/raw:ro", "-v", f"{output}:/data/out"]
    for level in ("participant", "group"):
        run = docker("run", *LOCKED, "-u", "12345:12345", "-e", "HOME=/nonexistent", "-w", "/", *mounts, image,
                     "/data/raw", "/data/out", level, "--fast", env={"PATH": os.environ["PATH"]})
        assert run.returncode == 0, run.stderr[-3000:]
    results = predict(raw, tmp_path / "cli", REPO / "models" / "phantom-t1-t2-t2s")
    assert predict.exit_code == 0 and len(results) == 2
    for result in results:
        container = sitk.GetArrayFromImage(sitk.ReadImage(str(output / result.outputs["mask"])))
        cli = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli" / result.outputs["mask"])))
        assert np.array_equal(container, cli), result.case_id
    description = json.loads((output / layout.DATASET_DESCRIPTION).read_text())
    assert description["GeneratedBy"][0]["Container"] == {"Type": "docker", "Tag": image}
    assert description["SourceDatasets"] == [{"URL": "file:///data/raw"}]
    assert (output / layout.BIDS_COHORT_TSV).read_text().count("\tok\t") == 2


def test_brain_extraction_runs_offline_inside_the_image(image, colin27):
    """deepbet's weights are inside the image: on the Colin27 head, under Apptainer's conditions and
    with no network, the image's brain extraction matches ch2bet (Dice >= 0.93)."""
    from mixmicrobleednet.phantoms import COLIN27_DIR

    script = ("import SimpleITK as sitk, numpy as np; from mixmicrobleednet.brain import extract_brain; "
              "found = sitk.GetArrayFromImage(extract_brain(sitk.ReadImage('/colin27/ch2.nii.gz'))) > 0; "
              "truth = sitk.GetArrayFromImage(sitk.ReadImage('/colin27/ch2bet.nii.gz')) > 0; "
              "print(2 * (found & truth).sum() / (found.sum() + truth.sum()))")
    run = docker("run", *LOCKED, "-u", "12345:12345", "-e", "HOME=/nonexistent", "-v", f"{COLIN27_DIR}:/colin27:ro",
                 "--entrypoint", "python", image, "-c", script, env={"PATH": os.environ["PATH"]})
    assert run.returncode == 0, run.stderr[-3000:]
    assert float(run.stdout.strip().splitlines()[-1]) >= 0.93


def test_unreadable_input_folder_is_a_clear_error(image, tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    result = run_container(image, hidden, tmp_path / "out")
    assert result.returncode == 2
    assert "cannot read the input folder /input: Permission denied" in result.stderr


def test_a_model_that_cannot_load_is_a_clear_error_and_no_case_is_written(image, cohorts, tmp_path):
    broken = tmp_path / "model"
    (broken / "fold_all").mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "fold_all/checkpoint_final.pth"):
        (broken / name).write_text("not a model")
    readable_by_the_image_user(broken)
    result = run_container(image, cohorts, tmp_path / "out", "-v", f"{broken}:/opt/ml/model:ro")
    assert result.returncode == 2
    assert "/opt/ml/model: unreadable plans.json or dataset.json" in result.stderr
    assert not list((tmp_path / "out").rglob("*.nii.gz"))


def test_three_cohorts_then_broken_cases_container_and_cli_agree(image, cohorts, tmp_path):
    subjects = ["s4c000", "s4c001", "s4c002"]
    clean = run_container(image, cohorts, tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert clean.stderr.count("model loaded once") == 1
    assert_masks_on_t2s_grids(cohorts, tmp_path / "clean", subjects)

    broken = tmp_path / "broken-input"
    shutil.copytree(cohorts, broken)
    broken.chmod(0o755)
    (broken / layout.input_name(stem("nochannel"), "T1")).write_bytes((cohorts / layout.input_name(stem("s4c002"), "T1")).read_bytes())
    (broken / layout.input_name(stem("nochannel"), "T2S")).write_bytes((cohorts / layout.input_name(stem("s4c002"), "T2S")).read_bytes())
    for channel in layout.CHANNELS:
        (broken / layout.input_name(stem("garbage"), channel)).write_text("this is not an image")
    # the three-channel model by name, as the CLI below: with auto, "nochannel" (T1 and T2*) would get the T2*-only model
    container = run_container(image, broken, tmp_path / "container", options=("--model", "phantom-t1-t2-t2s"))
    assert container.returncode == 1
    report = json.loads((tmp_path / "container" / "results.json").read_text())
    errors = {e["inputs"][0]["filename"][0]: e["error_messages"] for e in report}
    assert errors[layout.input_name(stem("nochannel"), "T1")] == [
        "missing T2 channel: expected file sub-nochannel_space-T2S_desc-masked_T2.nii.gz, needed by model "
        "phantom-t1-t2-t2s (channels T1, T2, T2S)"]
    assert "sub-garbage_space-T2S_desc-masked_T2S.nii.gz: not a readable image" in errors[layout.input_name(stem("garbage"), "T1")][0]
    assert "missing T2 channel" in container.stderr and "not a readable image" in container.stderr
    assert_masks_on_t2s_grids(cohorts, tmp_path / "container", subjects)

    cli = subprocess.run([str(REPO / ".venv" / "bin" / "mixmicrobleednet"), "predict", "-i", str(broken),
                          "-o", str(tmp_path / "cli"), "--fast", "--model", str(REPO / "models" / "phantom-t1-t2-t2s")],
                         capture_output=True, text=True)
    assert cli.returncode == 1
    assert json.loads((tmp_path / "cli" / "results.json").read_text()) == report
    for subject in subjects:
        from_cli = sitk.GetArrayFromImage(sitk.ReadImage(str(layout.prediction_path(tmp_path / "cli", stem(subject)))))
        from_container = sitk.GetArrayFromImage(sitk.ReadImage(str(layout.prediction_path(tmp_path / "clean", stem(subject)))))
        np.testing.assert_array_equal(from_cli, from_container)


def test_imported_v1_model_at_opt_ml_model_gives_v1s_mask(image, v1_run, imported_v1, tmp_path):
    """A model folder from import-v1, mounted where Grand-Challenge extracts a model tarball."""
    job = readable_by_the_image_user(write_platform_job(v1_run / "seed", "v1case", tmp_path / "job"))
    imported = readable_by_the_image_user(Path(shutil.copytree(imported_v1, tmp_path / "model")))
    output = tmp_path / "out"
    # torch, the runtime v1's mask matches voxel for voxel (test_v1import: OpenVINO may flip ties)
    run = run_container(image, job, output, "-v", f"{imported}:/opt/ml/model:ro", options=("--cpu-runtime", "torch"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "provided at /opt/ml/model, used instead of the baked-in" in run.stderr
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(output / layout.platform_output_paths()["mask"])))
    v1 = sitk.GetArrayFromImage(sitk.ReadImage(str(v1_run / "v1_prediction.nii.gz")))
    np.testing.assert_array_equal(mask, v1)


def test_platform_job_with_a_missing_socket_file_is_a_clear_error(image, tmp_path):
    seed = tmp_path / "seed"
    write_case(seed, "gc1", shape=(12, 30, 28), seed=2)
    job = write_platform_job(seed, "gc1", tmp_path / "job")
    next((job / "images" / "t2-brain-mri").glob("*.mha")).unlink()
    run = run_container(image, readable_by_the_image_user(job), tmp_path / "out")
    assert run.returncode == 1
    assert "images/t2-brain-mri/: 0 .mha/.tif files for socket 't2-brain-mri', expected exactly 1" in run.stderr
    assert not (tmp_path / "out" / layout.platform_output_paths()["mask"]).exists()


def _torch_inside(image: str) -> list[str]:
    run = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c",
                 "import torch; print(torch.__version__, torch.version.cuda or 'none')")
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.split()


def _labels(image: str) -> dict:
    return json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout)


@pytest.mark.parametrize("tag, has_cuda", [("mixmicrobleednet:latest", True), ("mixmicrobleednet:cpu", False)])
def test_each_image_holds_the_pytorch_its_labels_name(tag, has_cuda):
    if docker("image", "inspect", tag).returncode != 0:
        pytest.fail(f"{tag} is not built: run ./test.sh first")
    version, cuda = _torch_inside(tag)
    assert (cuda != "none") == has_cuda, (tag, version, cuda)
    assert ("+cpu" in version) != has_cuda
    labels = _labels(tag)
    assert labels["mixmicrobleednet.torch.version"].split("+")[0] == version.split("+")[0]
    assert labels["mixmicrobleednet.torch.cuda"] == cuda
    assert labels["mixmicrobleednet.device"] == ("gpu" if has_cuda else "cpu")
    assert labels["nl.diagnijmegen.rse.algorithm.hardware.gpu.count"] == ("1" if has_cuda else "0")


def test_a_build_whose_pytorch_does_not_match_its_device_fails():
    """A GPU build handed CPU wheels (what a pip configuration with a local CPU wheel did) stops."""
    wheelhouse = REPO / "wheelhouse" / "cpu" / "TORCH"
    if not wheelhouse.is_file():
        pytest.fail("wheelhouse/cpu is missing: run ./build.sh --cpu --offline (./test.sh) first")
    version = wheelhouse.read_text().split()[0]
    tag = "mixmicrobleednet:mismatch"
    run = subprocess.run([str(REPO / "build.sh"), "--offline", "--wheelhouse", "cpu", "--tag", tag],
                         capture_output=True, text=True)
    docker("rmi", tag)  # when the build wrongly succeeded
    assert run.returncode != 0
    assert f"DEVICE=gpu but torch {version} has CUDA none" in run.stdout + run.stderr
