import json

import numpy as np
import pytest
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.layout import case_stem as stem
from mixmicrobleednet.cases import CaseError, seed_cases, select_cases
from mixmicrobleednet.files import write_image_atomic
from mixmicrobleednet.imaging import align_to_reference, load_case, read_channel, same_grid

from conftest import brain_volume, make_image, predict, write_case


def test_input_names_round_trip():
    name = layout.input_name(stem("101"), "T2S")
    assert name == "sub-101_space-T2S_desc-masked_T2S.nii.gz"
    assert layout.parse_input_name(name) == {"stem": "sub-101_space-T2S", "subject": "101", "session": None,
                                             "acquisition": None, "run": None, "space": "T2S", "channel": "T2S",
                                             "extension": ".nii.gz"}
    assert layout.parse_input_name("sub-101_space-T2S_desc-masked_FLAIR.nii.gz") is None
    assert layout.parse_prediction_name(layout.prediction_name(stem("101"))) == "sub-101_space-T2S"
    session = layout.parse_input_name("sub-7_ses-2_acq-swi_run-1_space-T2S_desc-masked_T2S.nii")
    assert (session["stem"], session["session"], session["acquisition"], session["run"], session["extension"]) == \
        ("sub-7_ses-2_acq-swi_run-1_space-T2S", "2", "swi", "1", ".nii")


def test_each_stem_is_a_case_and_a_missing_t2s_is_its_error(tmp_path):
    write_case(tmp_path, "a1")
    write_case(tmp_path, "b2")
    (tmp_path / layout.input_name(stem("c3"), "T1")).write_bytes(b"")  # no T2*: a case that cannot run
    (tmp_path / "notes.txt").write_text("x")
    cases = seed_cases(tmp_path)
    assert [c.case_id for c in cases] == [stem("a1"), stem("b2"), stem("c3")]
    assert cases[0].channel_paths["T2"] == tmp_path / "sub-a1_space-T2S_desc-masked_T2.nii.gz"
    with pytest.raises(CaseError, match="missing T2S channel: expected file sub-c3_space-T2S_desc-masked_T2S.nii.gz"):
        load_case(cases[2])


def test_sessions_spaces_and_uncompressed_nifti_are_cases_of_their_own(tmp_path):
    write_case(tmp_path, "01", session="1")
    write_case(tmp_path, "01", session="2", extension=".nii")
    write_case(tmp_path, "01", space="T1w")
    write_case(tmp_path, "02")
    cases = seed_cases(tmp_path)
    ids = [c.case_id for c in cases]
    assert ids == ["sub-01_ses-1_space-T2S", "sub-01_ses-2_space-T2S", "sub-01_space-T1w", "sub-02_space-T2S"]
    outputs = [path for c in cases for path in c.output_paths.values()]
    assert len(set(outputs)) == len(outputs)  # no two cases share an output
    assert cases[1].channel_paths["T2S"].name == "sub-01_ses-2_space-T2S_desc-masked_T2S.nii"
    assert load_case(cases[1]).array.shape[0] == 3
    assert [c.case_id for c in select_cases(cases, participants=("sub-01",), sessions=("2",))] == [ids[1]]
    shards = [[c.case_id for c in select_cases(cases, shard=(k, 3))] for k in (1, 2, 3)]
    assert sorted(sum(shards, [])) == ids and shards[0] == [ids[0], ids[3]]


def test_a_channel_given_twice_is_an_error_for_that_case(tmp_path):
    write_case(tmp_path, "a1")
    write_case(tmp_path, "a1", extension=".nii", channels=("T1",))
    (case,) = seed_cases(tmp_path)
    with pytest.raises(CaseError, match="T1 given twice: sub-a1_space-T2S_desc-masked_T1.nii and "
                                        "sub-a1_space-T2S_desc-masked_T1.nii.gz"):
        load_case(case)


def test_missing_channel_is_a_case_error(tmp_path):
    paths = write_case(tmp_path, "a1")
    paths["T2"].unlink()
    with pytest.raises(CaseError, match="missing T2 channel.*sub-a1_space-T2S_desc-masked_T2.nii.gz"):
        load_case(seed_cases(tmp_path)[0])


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("not an image"), "not a readable image"),
    (lambda p: sitk.WriteImage(sitk.Image(10, 10, sitk.sitkFloat32) + 1, str(p)), "2D image"),
    (lambda p: sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 4, 5, 6), np.float32), isVector=False), str(p)),
     "4D image"),
    (lambda p: sitk.WriteImage(make_image(np.where(brain_volume() > 50, np.nan, 1).astype(np.float32)), str(p)),
     "NaN or infinite voxels"),
    (lambda p: sitk.WriteImage(make_image(np.full((4, 5, 6), np.inf, np.float32)), str(p)), "NaN or infinite"),
    (lambda p: sitk.WriteImage(make_image(np.zeros((4, 5, 6), np.int16)), str(p)), "every voxel is zero"),
])
def test_bad_channel_files_name_file_and_problem(tmp_path, make, message):
    path = tmp_path / "sub-x_space-T2S_desc-masked_T1.nii.gz"
    make(path)
    with pytest.raises(CaseError, match=message) as error:
        read_channel(path, "T1")
    assert path.name in str(error.value)


def test_rounding_differences_copy_the_t2s_header():
    reference = make_image(brain_volume())
    t1 = make_image(brain_volume(seed=3), spacing_xyz=(0.8 * (1 + 1e-7), 0.8, 1.2), origin=(-10.00002, 5.0, 2.00001))
    assert same_grid(t1, reference)
    aligned, action, registration = align_to_reference(t1, reference)
    assert action.startswith("T2S header copied") and registration is None
    assert aligned.GetOrigin() == reference.GetOrigin() and aligned.GetSpacing() == reference.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(aligned), sitk.GetArrayFromImage(t1))


def test_without_registration_shifted_or_resized_channels_are_resampled_in_world_space():
    """A bright voxel at a known world position lands at that position on the T2* grid."""
    reference = make_image(np.ones((20, 40, 36), np.float32), spacing_xyz=(0.8, 0.8, 1.2), origin=(0.0, 0.0, 0.0))
    moved = np.zeros((10, 20, 18), np.float32)
    moved[4, 8, 6] = 1000  # world = origin + index * spacing
    t1 = make_image(moved, spacing_xyz=(1.6, 1.6, 2.4), origin=(-3.2, 1.6, 2.4))
    world = t1.TransformIndexToPhysicalPoint((6, 8, 4))
    assert not same_grid(t1, reference)
    aligned, action, registration = align_to_reference(t1, reference, register=False)
    assert action.startswith("resampled onto the T2S grid as it lies in world space") and registration is None
    assert aligned.GetSize() == reference.GetSize() and aligned.GetOrigin() == reference.GetOrigin()
    array = sitk.GetArrayFromImage(aligned)
    peak = np.unravel_index(np.argmax(array), array.shape)
    assert np.allclose(reference.TransformIndexToPhysicalPoint([int(i) for i in peak[::-1]]), world)


def test_channel_on_another_grid_is_registered_and_the_record_says_how(tmp_path, random_model):
    """The same anatomy on a coarser grid: registered (a near-identity transform), logged, recorded."""
    paths = write_case(tmp_path / "in", "r1", shape=(24, 48, 40))
    t1 = sitk.ReadImage(str(paths["T1"]))
    coarse = sitk.Resample(t1, [20, 24, 16], sitk.Transform(), sitk.sitkLinear, t1.GetOrigin(), (1.6, 1.6, 1.8),
                           t1.GetDirection(), 0.0, sitk.sitkFloat32)
    sitk.WriteImage(coarse, str(paths["T1"]))
    stack = load_case(seed_cases(tmp_path / "in")[0])
    registration = stack.registrations["T1"]
    assert stack.alignment["T1"].startswith("registered rigidly onto the T2S grid")
    assert registration.rotation_degrees < 1 and registration.shift_mm < 0.5
    assert set(stack.registrations) == {"T1"} and stack.alignment["T2"].startswith("T2S header copied")
    results = predict(tmp_path / "in", tmp_path / "out", random_model)
    record = json.loads((tmp_path / "out" / seed_cases(tmp_path / "in")[0].output_paths["record"]).read_text())
    assert results[0].registrations == record["registrations"] and set(record["registrations"]) == {"T1"}
    picture = tmp_path / "out" / results[0].outputs["preprocessing_qc"]
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert record["settings"]["registration"] is True


@pytest.mark.parametrize("seed", [11, 12])
def test_registration_puts_real_anatomy_within_1_mm(colin27, seed):
    """Colin27's T1 onto a T2*-like copy of itself moved by a known rigid transform (up to 10°,
    10 mm) on a 0.9x0.9x3 mm grid: the brain surface lands within 1 mm (mean) of where it belongs."""
    from mixmicrobleednet.evaluate import surface_error
    from mixmicrobleednet.phantoms import random_rigid, t2s_like_copy

    head, surface = colin27
    rng = np.random.default_rng(seed)
    truth = random_rigid(rng, tuple(surface.mean(axis=0)))
    t2s = t2s_like_copy(head, truth, rng)
    aligned, action, registration = align_to_reference(head, t2s, channel="T1")
    mean, worst = surface_error(truth, registration.transform, surface)
    unregistered, _ = surface_error(truth, sitk.Euler3DTransform(), surface)
    assert mean <= 1.0 and unregistered > 3.0, (mean, worst, unregistered)
    assert aligned.GetSize() == t2s.GetSize() and action.startswith("registered rigidly")


def test_implausible_registration_is_a_clear_case_error(colin27):
    """A T1 40 mm and 30° away from the T2* scan (not the same session): the case fails with why."""
    from mixmicrobleednet.phantoms import t2s_like_copy

    head, surface = colin27
    far = sitk.Euler3DTransform()
    far.SetCenter(tuple(surface.mean(axis=0)))
    far.SetRotation(0.0, 0.0, np.deg2rad(30))
    far.SetTranslation((40.0, 0.0, 0.0))
    with pytest.raises(CaseError, match=r"T1: registration onto the T2S scan failed its check \(.*(rotation|shift|mutual)"):
        align_to_reference(head, t2s_like_copy(head, far, np.random.default_rng(0)), channel="T1")


def test_load_case_stacks_channels_in_network_order(tmp_path):
    write_case(tmp_path, "a1", shape=(6, 8, 10))
    stack = load_case(seed_cases(tmp_path)[0])
    assert stack.array.shape == (3, 6, 8, 10) and stack.array.dtype == np.float32
    assert np.allclose(stack.spacing_zyx, (1.2, 0.8, 0.8))
    assert set(stack.alignment) == set(layout.CHANNELS)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "out" / "mask.nii.gz"
    write_image_atomic(make_image(np.ones((3, 4, 5), np.uint8)), path)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["mask.nii.gz"]

    def broken_write(image, filename, *args, **kwargs):
        open(filename, "wb").write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_write)
    with pytest.raises(RuntimeError):
        write_image_atomic(make_image(np.zeros((3, 4, 5), np.uint8)), path)
    # the earlier file is intact and no partial file is left behind
    assert [p.name for p in path.parent.iterdir()] == ["mask.nii.gz"]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).all()


def test_unreadable_file_message_names_the_file_not_its_folder(tmp_path):
    path = tmp_path / "sub-x_space-T2S_desc-masked_T1.nii.gz"
    path.write_text("not an image")
    with pytest.raises(CaseError) as error:
        read_channel(path, "T1")
    assert str(tmp_path) not in str(error.value)
