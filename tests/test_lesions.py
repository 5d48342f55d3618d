"""The lesion stage: table against known phantom microbleeds, threshold and minimum size, QC picture."""

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from mixmicrobleednet.lesions import LESION_COLUMNS, LesionSettings, extract_lesions
from mixmicrobleednet.phantoms import Microbleed, _render_bleeds
from mixmicrobleednet.report import write_lesion_table, write_qc_picture

# An oblique, anisotropic grid so that index and world coordinates differ. (On 3 mm slices the
# label of a 2-3 mm microbleed itself is 30 % off the sphere volume: partial volume, not the table.)
SPACING_XYZ = (0.5, 0.5, 1.2)
SHAPE_ZYX = (24, 80, 90)


def oblique_grid() -> sitk.Image:
    grid = sitk.Image(SHAPE_ZYX[::-1], sitk.sitkFloat32)
    grid.SetSpacing(SPACING_XYZ)
    grid.SetOrigin((12.0, -30.0, 5.0))
    rotation = sitk.VersorTransform((0, 0, 1), 0.3)  # 17 degrees about the slice axis
    grid.SetDirection(rotation.GetMatrix())
    return grid


def known_bleeds(grid: sitk.Image) -> list[Microbleed]:
    places = [((20, 20, 6.0), 3.0), ((60, 25, 12.0), 5.0), ((30, 60, 16.6), 8.0), ((70, 65, 8.0), 2.4)]
    return [Microbleed(grid.TransformContinuousIndexToPhysicalPoint(ijk), diameter, "lobar")
            for ijk, diameter in places]


def test_table_matches_known_phantom_microbleeds(tmp_path):
    grid = oblique_grid()
    bleeds = known_bleeds(grid)
    # Partial-volume fraction as the probability: p > 0.5 is the phantoms' own label rule.
    fraction = _render_bleeds(SHAPE_ZYX, grid, bleeds, 1.0)
    lesions = extract_lesions(fraction, grid)
    table = lesions.with_world()  # as written
    assert list(table.columns) == LESION_COLUMNS
    assert lesions.count == len(bleeds) == 4
    assert lesions.mask.dtype == np.uint8 and lesions.mask.sum() == table["voxel_count"].sum()
    for bleed in bleeds:
        expected_ijk = np.array(grid.TransformPhysicalPointToContinuousIndex(bleed.centre_lps))
        distances = np.abs(table[["centroid_i", "centroid_j", "centroid_k"]].to_numpy() - expected_ijk)
        row = table.iloc[int(np.argmin(distances.sum(1)))]
        assert np.all(distances.min(0) < 1.0), f"centroid of the {bleed.diameter_mm} mm microbleed off by a voxel or more"
        lps = np.array(bleed.centre_lps)
        ras = row[["centroid_x_ras_mm", "centroid_y_ras_mm", "centroid_z_ras_mm"]].to_numpy(float)
        ijk = row[["centroid_i", "centroid_j", "centroid_k"]].to_numpy(float).tolist()
        np.testing.assert_allclose(ras, np.multiply(grid.TransformContinuousIndexToPhysicalPoint(ijk), [-1, -1, 1]),
                                   atol=2e-3)  # RAS is LPS with x and y negated
        assert np.linalg.norm(ras - lps * [-1, -1, 1]) < np.linalg.norm(SPACING_XYZ)  # within one voxel
        sphere = np.pi / 6 * bleed.diameter_mm ** 3
        assert row["volume_mm3"] == pytest.approx(sphere, rel=0.2)
        assert row["equivalent_diameter_mm"] == pytest.approx(bleed.diameter_mm, rel=0.1)
        assert 0.5 < row["mean_probability"] <= row["max_probability"] <= 1.0

    write_lesion_table(lesions, tmp_path / "lesions.csv")
    assert len(pd.read_csv(tmp_path / "lesions.csv")) == 4


def blobs_with_known_probabilities() -> tuple[np.ndarray, sitk.Image]:
    """Three cubes on a 1x1x2 mm grid: 27 voxels at p 0.95 (54 mm³), 8 at p 0.7 (16 mm³),
    1 voxel at p 0.55 (2 mm³), plus 100 voxels at p 0.3 (200 mm³) that no default setting calls a microbleed."""
    probabilities = np.zeros((20, 30, 30), np.float32)
    probabilities[2:5, 2:5, 2:5] = 0.95
    probabilities[10:12, 10:12, 10:12] = 0.7
    probabilities[15, 20, 20] = 0.55
    probabilities[5:9, 20:25, 3:8] = 0.3
    grid = sitk.Image((30, 30, 20), sitk.sitkFloat32)
    grid.SetSpacing((1.0, 1.0, 2.0))
    return probabilities, grid


@pytest.mark.parametrize("threshold, min_size, volumes", [
    (0.5, 0, [54, 16, 2]),      # the default: nnU-Net's argmax
    (0.6, 0, [54, 16]),         # p > 0.6 drops the 0.55 voxel
    (0.9, 0, [54]),
    (0.2, 0, [54, 200, 16, 2]),  # the p 0.3 region becomes a microbleed
    (0.5, 2, [54, 16, 2]),      # minimum size is inclusive: 2 mm³ stays
    (0.5, 2.1, [54, 16]),
    (0.5, 20, [54]),
])
def test_threshold_and_minimum_size_change_mask_table_and_count_alike(threshold, min_size, volumes):
    probabilities, grid = blobs_with_known_probabilities()
    lesions = extract_lesions(probabilities, grid, LesionSettings(threshold=threshold, min_size_mm3=min_size))
    assert lesions.count == len(volumes)
    assert sorted(lesions.table["volume_mm3"], reverse=True) == sorted(volumes, reverse=True)
    assert lesions.total_volume_mm3 == pytest.approx(sum(volumes))
    assert lesions.mask.sum() * 2.0 == pytest.approx(sum(volumes))  # the mask holds exactly the table's microbleeds
    assert list(lesions.table["lesion_id"]) == list(range(1, len(volumes) + 1))


def test_no_microbleeds_gives_an_empty_table_with_its_header(tmp_path):
    probabilities, grid = blobs_with_known_probabilities()
    lesions = extract_lesions(probabilities * 0, grid)
    assert lesions.count == 0 and lesions.total_volume_mm3 == 0 and not lesions.mask.any()
    write_lesion_table(lesions, tmp_path / "none.csv")
    assert (tmp_path / "none.csv").read_text().strip() == ",".join(LESION_COLUMNS)


@pytest.mark.parametrize("threshold, min_size", [(1.0, 0), (-0.1, 0), (0.5, -1)])
def test_invalid_settings_fail_up_front(threshold, min_size, tmp_path):
    with pytest.raises(ValueError):
        LesionSettings(threshold=threshold, min_size_mm3=min_size)
    from mixmicrobleednet.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["predict", "-i", str(tmp_path), "-o", str(tmp_path), "--threshold", str(threshold),
              "--min-size-mm3", str(min_size)])
    assert exit_.value.code == 2


def test_qc_picture_for_detections_and_for_none(tmp_path):
    grid = oblique_grid()
    t2s = sitk.GetImageFromArray(np.full(SHAPE_ZYX, 100, np.float32))
    t2s.CopyInformation(grid)
    lesions = extract_lesions(_render_bleeds(SHAPE_ZYX, grid, known_bleeds(grid), 1.0), grid)
    write_qc_picture(tmp_path / "qc.png", "x", t2s, lesions, LesionSettings())
    write_qc_picture(tmp_path / "none.png", "x", t2s, extract_lesions(np.zeros(SHAPE_ZYX, np.float32), grid),
                     LesionSettings())
    for name in ("qc.png", "none.png"):
        picture = sitk.ReadImage(str(tmp_path / name))
        assert picture.GetSize()[0] > 300
    # four microbleeds: one row of four panels; nothing detected: a lightbox of up to 12 slices
    assert sitk.ReadImage(str(tmp_path / "qc.png")).GetSize()[1] < sitk.ReadImage(str(tmp_path / "none.png")).GetSize()[1]
    assert not list(tmp_path.glob(".*partial*"))


def test_edge_margin_drops_microbleeds_whose_centre_lies_near_the_brains_edge():
    """A brain ball of radius 20 mm on 1 x 1 x 2 mm voxels; microbleeds centred 1.5, 4 and 12 mm
    inside its surface: a 3 mm margin drops the first only, and the mask, table and count agree."""
    spacing_xyz = (1.0, 1.0, 2.0)
    grid = sitk.Image((60, 60, 30), sitk.sitkFloat32)
    grid.SetSpacing(spacing_xyz)
    z, y, x = np.indices((30, 60, 60)) * np.array(spacing_xyz[::-1])[:, None, None, None]
    centre = np.array([30.0, 30.0, 30.0])  # z, y, x in mm
    brain = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= 20.0 ** 2
    probabilities = np.zeros(brain.shape, np.float32)
    for depth, direction in [(1.5, [0, 0, 1]), (4.0, [0, 0, -1]), (12.0, [0, 1, 0])]:  # 2 mm balls
        at = centre + np.multiply(direction, 20.0 - depth)
        probabilities[(z - at[0]) ** 2 + (y - at[1]) ** 2 + (x - at[2]) ** 2 <= 1.0] = 0.9
    assert extract_lesions(probabilities, grid, LesionSettings(), brain).count == 3
    kept = extract_lesions(probabilities, grid, LesionSettings(edge_margin_mm=3.0), brain)
    assert kept.count == 2 and kept.mask.sum() == kept.table["voxel_count"].sum()
    assert list(kept.table["lesion_id"]) == [1, 2] and len(kept.near_edge) == 1  # set aside, measured as the rest
    assert kept.near_edge.iloc[0]["centroid_i"] == pytest.approx(30 + 18.5) and kept.near_edge.iloc[0]["voxel_count"] > 0
    assert sorted(kept.table[["centroid_i", "centroid_j"]].round().itertuples(index=False)) == [(30 - 16, 30), (30, 30 + 8)]
    assert extract_lesions(probabilities, grid, LesionSettings(edge_margin_mm=5.0), brain).count == 1
    # the grid's border counts as the brain's edge: a brain filling the grid still has one
    assert extract_lesions(probabilities, grid, LesionSettings(edge_margin_mm=12.5), np.ones_like(brain)).count == 2
    with pytest.raises(ValueError, match="brain mask"):
        extract_lesions(probabilities, grid, LesionSettings(edge_margin_mm=3.0))
    with pytest.raises(ValueError):
        LesionSettings(edge_margin_mm=-1)
    assert "3 mm or more inside the brain" in LesionSettings(edge_margin_mm=3.0).describe()
    # no margin set: decided by how the brain mask was found, and by the model where it was extracted
    assert LesionSettings().margin_mm == 0 and LesionSettings().for_brain(False, 2.0).edge_margin_mm == 0
    assert LesionSettings().for_brain(extracted=True, model_margin_mm=2.0).edge_margin_mm == 2
    assert LesionSettings(edge_margin_mm=1.0).for_brain(extracted=True, model_margin_mm=2.0).edge_margin_mm == 1
