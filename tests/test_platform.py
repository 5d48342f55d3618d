"""Today's Grand-Challenge interface: inputs.json and sockets in, sockets out, through the same core."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.layout import case_stem as stem
from mixmicrobleednet.cases import InputFolderError, platform_case
from mixmicrobleednet.cli import main
from mixmicrobleednet.modelfolder import choose_model_dir

from conftest import write_case, write_platform_job

OUTPUT_MASK = layout.platform_output_paths()["mask"]


@pytest.fixture
def job(tmp_path):
    seed = tmp_path / "seed"
    write_case(seed, "p1", shape=(10, 30, 28), spacing_xyz=(0.45, 0.45, 3.5), seed=3)
    return write_platform_job(seed, "p1", tmp_path / "job")


def test_slugs_come_from_the_documented_configuration():
    assert layout.INPUT_SOCKETS == {"T1": "t1-brain-mri", "T2": "t2-brain-mri", "T2S": "t2-star-brain-mri"}
    assert OUTPUT_MASK == "images/cerebral-microbleed-segmentation/output.mha"
    assert set(layout.platform_output_paths()) == {"mask", "count", "total_volume"}


def test_inputs_json_selects_the_platform_layout(job):
    case = platform_case(job, layout.CHANNELS)
    assert case.input_problem is None
    for channel, slug in layout.INPUT_SOCKETS.items():
        assert case.channel_paths[channel].parent == job / "images" / slug
        assert case.channel_paths[channel].suffix == ".mha"
    assert case.output_paths == layout.platform_output_paths()


def test_same_mask_as_the_seed_layout_and_values_as_json(job, tmp_path, random_model):
    common = ["--model", str(random_model), "--device", "cpu", "--fast", "--threshold", "0.45"]
    assert main(["predict", "-i", str(tmp_path / "seed"), "-o", str(tmp_path / "seed-out"), *common]) == 0
    assert main(["predict", "-i", str(job), "-o", str(tmp_path / "job-out"), *common]) == 0

    platform_mask = sitk.ReadImage(str(tmp_path / "job-out" / OUTPUT_MASK))
    seed_mask = sitk.ReadImage(str(layout.prediction_path(tmp_path / "seed-out", stem("p1"))))
    t2s = sitk.ReadImage(str(tmp_path / "seed" / layout.input_name(stem("p1"), "T2S")))
    assert platform_mask.GetPixelID() == sitk.sitkUInt8
    for image in (platform_mask, seed_mask):
        assert image.GetSize() == t2s.GetSize()
        np.testing.assert_allclose(image.GetSpacing(), t2s.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(image.GetOrigin(), t2s.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), t2s.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(platform_mask), sitk.GetArrayFromImage(seed_mask))

    summary = (tmp_path / "seed-out" / layout.SUMMARY_CSV).read_text().splitlines()[1].split(",")
    count = json.loads((tmp_path / "job-out" / "cerebral-microbleed-count.json").read_text())
    volume = json.loads((tmp_path / "job-out" / "cerebral-microbleed-volume-mm3.json").read_text())
    assert isinstance(count, int) and count == int(summary[3])
    assert isinstance(volume, float) and volume == pytest.approx(float(summary[4]), abs=1e-3)
    # the job's outputs are its sockets alone
    assert sorted(str(p.relative_to(tmp_path / "job-out")) for p in (tmp_path / "job-out").rglob("*") if p.is_file()) \
        == sorted(layout.platform_output_paths().values())


def test_missing_or_unreadable_socket_files_are_clear_errors(job, tmp_path, random_model):
    t2_file = next((job / "images" / "t2-brain-mri").glob("*.mha"))
    t2_file.unlink()
    t2s_file = next((job / "images" / "t2-star-brain-mri").glob("*.mha"))
    t2s_file.write_text("not an image")
    out = tmp_path / "out"
    code = main(["predict", "-i", str(job), "-o", str(out), "--model", str(random_model), "--device", "cpu", "--fast"])
    assert code == 1
    assert not (out / OUTPUT_MASK).exists()
    case = platform_case(job, layout.CHANNELS)
    assert "images/t2-brain-mri/: 0 .mha/.tif files for socket 't2-brain-mri', expected exactly 1" in case.input_problem

    entries = json.loads((job / "inputs.json").read_text())
    (job / "inputs.json").write_text(json.dumps([e for e in entries if e["interface"]["slug"] != "t1-brain-mri"]))
    case = platform_case(job, layout.CHANNELS)
    assert "inputs.json names no socket 't1-brain-mri' (the T1 image)" in case.input_problem


def test_auto_gives_a_job_the_model_its_named_sockets_fit(job, tmp_path, random_model, monkeypatch, caplog):
    """--model auto: inputs.json says which channels the job offers. A job naming only the T2*
    socket gets the T2*-only model; one naming all three but lacking the T2 file is a broken job
    (an error naming the socket), never quietly run with fewer channels."""
    import shutil

    from mixmicrobleednet.train import write_random_model

    models = tmp_path / "models"
    shutil.copytree(random_model, models / "three")
    write_random_model(models / "t2s-only", channels=("T2S",))
    monkeypatch.setenv("MIXMICROBLEEDNET_MODELS", str(models))
    caplog.set_level("INFO")
    common = ["--model", "auto", "--device", "cpu", "--fast"]

    t2_file = next((job / "images" / "t2-brain-mri").glob("*.mha"))
    t2_file.unlink()
    assert main(["predict", "-i", str(job), "-o", str(tmp_path / "broken"), *common]) == 1
    assert "model three for 1 case(s)" in caplog.text
    assert "images/t2-brain-mri/: 0 .mha/.tif files for socket 't2-brain-mri', expected exactly 1" in caplog.text
    assert not (tmp_path / "broken" / OUTPUT_MASK).exists()

    entries = json.loads((job / "inputs.json").read_text())
    (job / "inputs.json").write_text(json.dumps([e for e in entries if e["interface"]["slug"] == "t2-star-brain-mri"]))
    caplog.clear()
    assert main(["predict", "-i", str(job), "-o", str(tmp_path / "swi"), *common]) == 0
    assert "model t2s-only for 1 case(s)" in caplog.text
    assert (tmp_path / "swi" / OUTPUT_MASK).is_file()


def test_unreadable_socket_image_names_the_file(job, tmp_path, random_model, caplog):
    t2s_file = next((job / "images" / "t2-star-brain-mri").glob("*.mha"))
    t2s_file.write_text("not an image")
    code = main(["predict", "-i", str(job), "-o", str(tmp_path / "out"), "--model", str(random_model), "--device", "cpu"])
    assert code == 1
    assert f"{t2s_file.name}: not a readable image" in caplog.text


def test_malformed_inputs_json_stops_the_job(job, tmp_path, random_model):
    (job / "inputs.json").write_text("{not json")
    with pytest.raises(InputFolderError, match="not a readable Grand-Challenge inputs.json"):
        platform_case(job, layout.CHANNELS)
    assert main(["predict", "-i", str(job), "-o", str(tmp_path / "out"), "--model", str(random_model)]) == 2


def test_a_model_at_opt_ml_model_wins_over_the_baked_in_one(tmp_path, random_model):
    import shutil

    baked_in, mounted = tmp_path / "weights", tmp_path / "opt-ml-model"
    assert choose_model_dir(baked_in, mounted) == baked_in  # nothing mounted
    mounted.mkdir()
    assert choose_model_dir(baked_in, mounted) == baked_in  # empty
    shutil.copytree(random_model, mounted / "MixMicrobleedNet")  # a tarball with one top folder
    assert choose_model_dir(baked_in, mounted) == mounted / "MixMicrobleedNet"
    shutil.copytree(random_model, mounted, dirs_exist_ok=True)  # a tarball of the folder's contents
    assert choose_model_dir(baked_in, mounted) == mounted


def test_an_unreadable_input_folder_is_not_taken_for_a_job(tmp_path, monkeypatch):
    """Without the right to look into /input, `inputs.json`'s stat fails with EACCES (root never
    sees that, so it is simulated): the seed layout's discovery then reports the folder clearly."""
    from pathlib import Path

    from mixmicrobleednet.cases import uses_platform_interface

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", denied)
    assert uses_platform_interface(tmp_path) is False
