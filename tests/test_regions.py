"""Microbleed regions (MARS): the atlas, its placement onto a case, the counts, and the run's table,
summary, record and QC picture saying the same."""

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import cases_for, predict, write_case
from mixmicrobleednet import layout, regions
from mixmicrobleednet.lesions import LESION_COLUMNS, centroids_lps
from mixmicrobleednet.phantoms import generate
from mixmicrobleednet.pipeline import CaseRun, FunctionPredictor, run_cases
from mixmicrobleednet.report import OutputSettings
from mixmicrobleednet.runner import EXIT_RUN_FAILED


@pytest.fixture(scope="session")
def atlas():
    return regions.load_atlas(regions.atlas_folder())


def _identity() -> regions.AtlasPlacement:
    return regions.AtlasPlacement(sitk.AffineTransform(3), "T1", 0.0, 1.0, 0.0)


# Textbook places in MNI coordinates (RAS mm) and the MARS region they lie in.
KNOWN_PLACES = [((-25, 2, 0), "basal ganglia"), ((12, -18, 8), "thalamus"), ((0, -28, -35), "brainstem"),
                ((25, -65, -35), "cerebellum"), ((-40, 40, 25), "frontal"), ((-35, -60, 50), "parietal"),
                ((-58, -25, -10), "temporal"), ((15, -95, 5), "occipital"), ((38, 2, 2), "insula"),
                ((0, -35, 15), "corpus callosum"), ((22, -12, 10), "internal capsule")]


def test_atlas_knows_textbook_places(atlas):
    points = np.array([(-x, -y, z) for (x, y, z), _ in KNOWN_PLACES], float)  # RAS -> LPS
    assert regions.regions_at(points, atlas) == [region for _, region in KNOWN_PLACES]
    present = set(np.unique(sitk.GetArrayViewFromImage(atlas.regions)))
    assert present == set(range(1, len(regions.MARS_REGIONS) + 1))  # every region, and no voxel without one


def test_locate_gives_hemisphere_and_mni_coordinates(atlas):
    located = regions.locate(np.array([[25.0, -2.0, 0.0], [-25.0, -2.0, 0.0], [0.5, 28.0, -35.0]]), _identity(), atlas)
    assert list(located.columns) == regions.REGION_COLUMNS
    assert located["hemisphere"].tolist() == ["left", "right", "midline"]  # LPS +x is the patient's left
    assert located["region_category"].tolist() == ["deep", "deep", "infratentorial"]
    assert located[["mni_x_mm", "mni_y_mm", "mni_z_mm"]].iloc[0].tolist() == [-25.0, 2.0, 0.0]  # RAS


def test_counts_and_strictly_lobar():
    def table(*names):
        return pd.DataFrame({"region": list(names)})

    assert regions.counts(table("frontal", "occipital"))["strictly_lobar"]
    mixed = regions.counts(table("frontal", "thalamus", "cerebellum", "frontal"))
    assert mixed["categories"] == {"lobar": 2, "deep": 1, "infratentorial": 1} and not mixed["strictly_lobar"]
    assert mixed["regions"]["frontal"] == 2 and sum(mixed["regions"].values()) == 4
    assert not regions.counts(table())["strictly_lobar"]  # no microbleed: not strictly lobar
    assert regions.summary_values(None) == dict.fromkeys(regions.SUMMARY_COLUMNS)


def test_placement_recovers_a_known_affine(atlas):
    """The template moved by a known affine (scaled, rotated, shifted) onto a T2*-like 1x1x3 mm
    grid with its contrast inverted: the placement finds the way back to MNI within 2 mm at the
    brain's surface, and the regions of points inside the brain agree."""
    truth = sitk.AffineTransform(3)  # case world -> MNI
    truth.SetCenter((0.0, 18.0, 10.0))
    rotation = sitk.Euler3DTransform((0, 0, 0), np.radians(8), np.radians(-5), np.radians(4))
    truth.SetMatrix((np.array(rotation.GetMatrix()).reshape(3, 3) @ np.diag([1.08, 0.95, 1.03])).ravel().tolist())
    truth.SetTranslation((6.0, -4.0, 5.0))
    grid = sitk.Image([170, 200, 55], sitk.sitkFloat32)
    grid.SetSpacing((1.0, 1.0, 3.0))
    grid.SetOrigin((-85.0, -110.0, -70.0))
    case = sitk.Resample(atlas.template, grid, truth, sitk.sitkLinear, 0.0)
    array = sitk.GetArrayFromImage(case)
    case = sitk.GetImageFromArray(np.where(array > 0, 300 - array, 0).astype(np.float32))  # T2*-like: inverted
    case.CopyInformation(grid)
    placement = regions.place_atlas(case, "T2S", atlas)
    brain = np.argwhere(sitk.GetArrayFromImage(case) > 0)[::997]
    points = np.array([case.TransformContinuousIndexToPhysicalPoint(p[::-1].tolist()) for p in brain.astype(float)])
    found = np.array([placement.transform.TransformPoint(p.tolist()) for p in points])
    expected = np.array([truth.TransformPoint(p.tolist()) for p in points])
    assert np.linalg.norm(found - expected, axis=1).mean() < 2.0
    agree = np.mean(np.array(regions.regions_at(found, atlas)) == np.array(regions.regions_at(expected, atlas)))
    assert agree > 0.9


@pytest.fixture(scope="module")
def phantom_folder(tmp_path_factory, atlas):
    folder = tmp_path_factory.mktemp("phantoms")
    generate(folder, 2, 4, ["lowres"])  # 33 and 11 microbleeds: lobar, deep and infratentorial
    return folder


def _truth_predictor(folder):
    """The predict stage replaced by the phantom's own label: the regions of known microbleeds."""
    def predict(stack, model):
        label = folder / layout.label_name(stack.case_id)
        return sitk.GetArrayFromImage(sitk.ReadImage(str(label))).astype(np.float32)
    return predict


def test_phantom_regions_agree_with_the_generator(phantom_folder, random_model, tmp_path):
    out = tmp_path / "out"
    results = run_cases(cases_for(phantom_folder, random_model), CaseRun(FunctionPredictor(_truth_predictor(phantom_folder)), out))
    truth = pd.read_csv(phantom_folder / "microbleeds.csv")
    assert set(truth["location"]) == set(regions.CATEGORIES)
    summary = pd.read_csv(out / layout.SUMMARY_CSV)
    agree = []
    for result in results:
        table = pd.read_csv(out / result.outputs["lesions"])
        assert list(table.columns) == LESION_COLUMNS + regions.REGION_COLUMNS  # columns added, none renamed
        bleeds = truth[truth["subject"] == result.subject]
        centres = centroids_lps(table)
        nearest = [int(np.argmin(np.linalg.norm(centres - [b.x_lps, b.y_lps, b.z_lps], axis=1)))
                   for b in bleeds.itertuples()]
        agree += list(table["region_category"].iloc[nearest].to_numpy() == bleeds["location"].to_numpy())
        # table, record and summary say the same (one function assigns regions)
        record = json.loads((out / result.outputs["mask"]).parent.parent.joinpath(
            layout.RECORDS_DIR, layout.record_name(result.case_id)).read_text())
        counted = table["region_category"].value_counts()
        assert record["regions"]["categories"] == {c: int(counted.get(c, 0)) for c in regions.CATEGORIES}
        assert record["regions"]["placement"]["channel"] == "T1" and "regions" in record["stage_seconds"]
        row = summary[summary["case"] == result.case_id].iloc[0]
        assert all(row[f"count_{c}"] == n for c, n in record["regions"]["categories"].items())
        assert bool(row["strictly_lobar"]) == record["regions"]["strictly_lobar"]
        assert (out / result.outputs["qc"]).stat().st_size > 0
    assert len(agree) == len(truth) and np.mean(agree) >= 0.9


def test_no_regions_keeps_the_seed_columns(phantom_folder, random_model, tmp_path):
    out = tmp_path / "out"
    [result, _] = run_cases(cases_for(phantom_folder, random_model), CaseRun(
        FunctionPredictor(_truth_predictor(phantom_folder)), out, settings=OutputSettings(regions=False)))
    assert list(pd.read_csv(out / result.outputs["lesions"]).columns) == LESION_COLUMNS
    summary = pd.read_csv(out / layout.SUMMARY_CSV)
    assert summary[regions.SUMMARY_COLUMNS].isna().all().all()
    assert "regions" not in result.stage_seconds


def test_missing_atlas_stops_the_run_before_any_case(random_model, tmp_path, monkeypatch, caplog):
    write_case(tmp_path / "input", "c1")
    monkeypatch.setenv(layout.ATLAS_DIR_VARIABLE, str(tmp_path / "nowhere"))
    assert predict(tmp_path / "input", tmp_path / "out", random_model) == []
    assert predict.exit_code == EXIT_RUN_FAILED
    assert "ch2bet.nii.gz" in caplog.text and "--no-regions" in caplog.text
    assert not (tmp_path / "out" / layout.IMAGES_DIR).exists()
    predict(tmp_path / "input", tmp_path / "out", random_model,
            output=OutputSettings(regions=False, qc_picture=False))
    assert predict.exit_code == 0 and (tmp_path / "out" / layout.SUMMARY_CSV).is_file()  # no atlas needed then


def test_a_case_the_atlas_cannot_be_placed_on_keeps_its_mask(random_model, tmp_path):
    """A scan that is no whole brain (a small ellipsoid): the microbleed is found and written, its
    region columns stay empty, and the record and the log say why."""
    write_case(tmp_path / "input", "c1")
    out = tmp_path / "out"

    def one_dot(stack, model):
        probabilities = np.zeros(stack.array.shape[1:], np.float32)
        probabilities[10, 20, 18] = 1
        return probabilities

    [result] = run_cases(cases_for(tmp_path / "input", random_model), CaseRun(FunctionPredictor(one_dot), out))
    assert not result.error_messages and result.microbleed_count == 1
    assert "atlas registration" in result.regions["error"]
    table = pd.read_csv(out / result.outputs["lesions"])
    assert list(table.columns) == LESION_COLUMNS + regions.REGION_COLUMNS and table["region"].isna().all()
    assert pd.read_csv(out / layout.SUMMARY_CSV)[regions.SUMMARY_COLUMNS].isna().all().all()
