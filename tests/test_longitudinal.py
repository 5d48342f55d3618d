"""Two sessions compared (longitudinal.py, #34) on small hand-built pairs: one smooth 'head' seen
at two visits (the follow-up moved by 10° and 10 mm, on another grid, with other noise), and
microbleeds written straight into each visit's probability map, mask, lesion table and record, as a
run with --save-probabilities leaves them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.distance import cdist

from mixmicrobleednet import decisions, layout, longitudinal, records
from mixmicrobleednet.cases import Case, has_series
from mixmicrobleednet.files import write_image_atomic
from mixmicrobleednet.lesions import centroids_lps, extract_lesions
from mixmicrobleednet.longitudinal import LongitudinalSettings, Scan, aria_h_grade, classify, compare_visits, find_series
from mixmicrobleednet.report import write_lesion_table

#: Microbleed places in the baseline's world (LPS mm; the head's centre is the origin).
STAYS, DISAPPEARS, APPEARS = (18.0, 12.0, 6.0), (-16.0, -18.0, 10.0), (6.0, 22.0, -8.0)


def _grid(spacing_xyz, size_xyz) -> sitk.Image:
    grid = sitk.Image(list(size_xyz), sitk.sitkFloat32)
    grid.SetSpacing(spacing_xyz)
    grid.SetOrigin([-(n - 1) * s / 2 for n, s in zip(size_xyz, spacing_xyz)])  # centred on the origin
    return grid


@pytest.fixture(scope="module")
def head() -> sitk.Image:
    return make_head()


def make_head() -> sitk.Image:
    """An ellipsoid 'brain' (semi-axes 40, 34, 28 mm) with a smooth texture and lopsided blobs, so
    that a registration has something to hold on to in every direction."""
    grid = _grid((1.5, 1.5, 1.5), (64, 64, 52))
    zz, yy, xx = (np.indices(sitk.GetArrayViewFromImage(grid).shape) - np.array([51, 63, 63])[:, None, None, None] / 2) * 1.5
    inside = (xx / 40) ** 2 + (yy / 34) ** 2 + (zz / 28) ** 2 < 1
    texture = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=inside.shape), 1.5)
    blobs = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / 60) * w
                for x, y, z, w in ((20, -10, 5, 0.8), (-15, 15, -8, -0.6), (5, 5, 15, 0.5)))
    image = sitk.GetImageFromArray((inside * (1.0 + 3 * texture + blobs)).astype(np.float32))
    image.CopyInformation(grid)
    return image


def _motion(degrees=10.0, shift=(6.0, -8.0, 0.0)) -> sitk.Transform:
    """The follow-up's world → the baseline's: a turn about an oblique axis through the centre, then a shift."""
    pose = sitk.VersorRigid3DTransform()
    pose.SetRotation((1 / np.sqrt(2), 0.0, 1 / np.sqrt(2)), float(np.deg2rad(degrees)))
    pose.SetTranslation(shift)
    return pose


def _scan(head: sitk.Image, grid: sitk.Image, pose: sitk.Transform, seed: int, microbleeds=()) -> sitk.Image:
    """The head as a visit's T2* scan shows it, with a dark ball at each of its microbleeds (LPS mm, the grid's world)."""
    scan = sitk.Resample(head, grid, pose, sitk.sitkLinear, 0.0)
    array = sitk.GetArrayFromImage(scan) * (1 - _probability(grid, dict.fromkeys(microbleeds, 0.7)))
    array += (array > 0) * np.random.default_rng(seed).normal(scale=0.05, size=array.shape).astype(np.float32)
    noisy = sitk.GetImageFromArray(array * 300)
    noisy.CopyInformation(grid)
    return noisy


def _probability(grid: sitk.Image, places: dict[tuple, float], radius_mm: float = 2.5) -> np.ndarray:
    """A probability map with a ball of the given probability at each place (LPS mm, the grid's world)."""
    shape = sitk.GetArrayViewFromImage(grid).shape
    index = np.indices(shape).reshape(3, -1)[::-1].T.astype(float)  # x, y, z
    world = np.array(grid.GetOrigin()) + index * np.array(grid.GetSpacing())  # the grids are axis-aligned
    probability = np.zeros(len(world), np.float32)
    for place, value in places.items():
        probability = np.maximum(probability, value * (np.linalg.norm(world - place, axis=1) <= radius_mm))
    return probability.reshape(shape)


def write_visit(output_dir, input_dir, session: str, t2s: sitk.Image, places: dict[tuple, float], subject="01",
                probabilities: bool = True) -> str:
    """One session as a run leaves it: the T2* input, and the mask, lesion table, brain mask,
    probability map (unless not `probabilities`) and record in the output folder."""
    stem = layout.case_stem(subject, session)
    paths = layout.seed_output_paths(stem)
    write_image_atomic(t2s, input_dir / layout.input_name(stem, layout.REFERENCE_CHANNEL))
    probability = _probability(t2s, places)
    lesions = extract_lesions(probability, t2s)
    image = lambda array: (lambda made: (made.CopyInformation(t2s), made)[1])(sitk.GetImageFromArray(array))
    write_image_atomic(image(lesions.mask), output_dir / paths["mask"])
    write_image_atomic(image((sitk.GetArrayFromImage(t2s) > 0).astype(np.uint8)), output_dir / paths["brain_mask"])
    write_lesion_table(lesions, output_dir / paths["lesions"])
    outputs = {kind: paths[kind] for kind in ("mask", "lesions", "brain_mask")}
    if probabilities:
        write_image_atomic(image(probability), output_dir / paths["probability"])
        outputs["probability"] = paths["probability"]
    case = Case(stem, subject, session, {}, paths)
    records.write_record(output_dir, case, {"case_id": stem, "subject": subject, "session": session, "status": "ok",
                                            "error_messages": [], "outputs": outputs,
                                            "microbleed_count": lesions.count})
    return stem


def test_a_microbleed_appears_one_disappears_and_one_stays_while_the_head_moves(tmp_path, head):
    output_dir, input_dir = tmp_path / "out", tmp_path / "in"
    pose = _motion()  # 10° and 10 mm
    back = pose.GetInverse()  # the baseline's world → the follow-up's
    at_baseline, at_follow_up = (STAYS, DISAPPEARS), (back.TransformPoint(STAYS), back.TransformPoint(APPEARS))
    baseline = _scan(head, _grid((2.0, 2.0, 2.0), (56, 56, 44)), sitk.Transform(), 1, at_baseline)
    follow_up = _scan(head, _grid((1.8, 1.8, 2.4), (64, 64, 40)), pose, 2, at_follow_up)
    write_visit(output_dir, input_dir, "1", baseline, dict.fromkeys(at_baseline, 0.9))
    follow_up_case = write_visit(output_dir, input_dir, "2", follow_up, dict.fromkeys(at_follow_up, 0.9))

    rows = compare_visits(output_dir, input_dir)

    assert [(r["status"], r["new"], r["persistent"], r["resolved"]) for r in rows] == [("ok", 1, 1, 1)]
    assert rows[0]["aria_h_microhemorrhage_grade"] == "mild" and rows[0]["baseline_by"] == "session order"
    pairs = pd.read_csv(output_dir / layout.LONGITUDINAL_TSV, sep="\t")
    assert pairs[["subject", "baseline", "follow_up", "new"]].values.tolist() == [[1, 1, 2, 1]]
    microbleeds = pd.read_csv(output_dir / layout.LONGITUDINAL_MICROBLEEDS_TSV, sep="\t").set_index("status")
    for status, place, visit in (("persistent", STAYS, "baseline"), ("resolved", DISAPPEARS, "baseline"),
                                 ("new", back.TransformPoint(APPEARS), "follow_up")):
        found = microbleeds.loc[status, [f"{visit}_{axis}_ras_mm" for axis in "xyz"]].to_numpy(float)
        assert np.linalg.norm(found * [-1, -1, 1] - place) < 0.5, status  # the table's RAS, the visit's world
    # the places mapped through the registration land where the motion put them
    stays_mapped = microbleeds.loc["persistent", [f"follow_up_{axis}_ras_mm" for axis in "xyz"]].to_numpy(float)
    assert np.linalg.norm(stays_mapped * [-1, -1, 1] - back.TransformPoint(STAYS)) < 0.5
    assert microbleeds.loc["persistent", "distance_mm"] < 1.0
    resolved_mapped = microbleeds.loc["resolved", [f"follow_up_{axis}_ras_mm" for axis in "xyz"]].to_numpy(float)
    assert np.linalg.norm(resolved_mapped * [-1, -1, 1] - back.TransformPoint(DISAPPEARS)) < 1.0
    paths = layout.longitudinal_paths(follow_up_case)
    record = json.loads((output_dir / paths["record"]).read_text())
    assert record["registration"]["rotation_degrees"] == pytest.approx(10.0, abs=0.5)
    assert record["outputs"] == {"qc": paths["qc"]} and (output_dir / paths["qc"]).stat().st_size > 10_000
    assert (rows[0]["baseline_microbleeds"], rows[0]["follow_up_microbleeds"]) == ("model", "model")

    # a rater's finished review of the follow-up rejects the new detection: the comparison counts theirs
    follow_up_record = next(r for r in records.read_records(output_dir) if r["case_id"] == follow_up_case)
    table = decisions.detections(output_dir, follow_up_record)
    lesion_of = {int(i): np.array(p) for i, p in zip(table["lesion_id"], centroids_lps(table))}
    new_id = min(lesion_of, key=lambda i: np.linalg.norm(lesion_of[i] - back.TransformPoint(APPEARS)))
    for lesion_id in lesion_of:
        decisions.record_decision(output_dir, follow_up_record, "alice", lesion_id,
                                  "reject" if lesion_id == new_id else "accept")
    decisions.set_done(output_dir, follow_up_record, "alice", True)
    rows = compare_visits(output_dir, input_dir)
    assert [(r["status"], r["new"], r["persistent"], r["resolved"]) for r in rows] == [("ok", 0, 1, 1)]
    assert (rows[0]["baseline_microbleeds"], rows[0]["follow_up_microbleeds"]) == ("model", "review by alice")
    assert pd.read_csv(output_dir / layout.LONGITUDINAL_TSV, sep="\t")["follow_up_microbleeds"].tolist() == [
        "review by alice"]


def _scan_of(grid: sitk.Image, places: dict[tuple, float], brain: np.ndarray | None = None, dark=()) -> Scan:
    """A visit's Scan in memory (no registration needed: both visits on one grid): a flat T2* scan,
    dark at the places `dark` names."""
    probability = _probability(grid, places)
    lesions = extract_lesions(probability, grid)
    as_image = lambda array: (lambda made: (made.CopyInformation(grid), made)[1])(sitk.GetImageFromArray(array))
    shape = sitk.GetArrayViewFromImage(grid).shape
    t2s = as_image(100 * (1 - _probability(grid, dict.fromkeys(dark, 0.6))))
    return Scan(t2s, np.ones(shape, bool) if brain is None else brain, as_image(lesions.mask), as_image(probability),
                lesions.with_world())


SMALL = _grid((2.0, 2.0, 2.0), (30, 30, 20))
SPOT, OTHER_SPOT = (8.0, -6.0, 4.0), (-10.0, 8.0, -6.0)


@pytest.mark.parametrize("raised, expected", [(0.3, "persistent"), (0.05, "new")])
def test_a_microbleed_missed_at_baseline_but_raised_in_its_map_is_persistent(raised, expected):
    found = classify(_scan_of(SMALL, {SPOT: raised}), _scan_of(SMALL, {SPOT: 0.9}), sitk.Transform())
    assert found[["status", "seen_at"]].values.tolist() == [[expected, "follow-up"]]
    assert found["baseline_probability"].iloc[0] == pytest.approx(raised)


@pytest.mark.parametrize("raised, expected", [(0.3, "persistent"), (0.05, "resolved")])
def test_a_microbleed_missed_at_follow_up_but_raised_in_its_map_is_persistent(raised, expected):
    found = classify(_scan_of(SMALL, {SPOT: 0.9}), _scan_of(SMALL, {SPOT: raised}), sitk.Transform())
    assert found[["status", "seen_at"]].values.tolist() == [[expected, "baseline"]]


def test_a_mimic_marked_at_both_visits_is_not_new_and_the_threshold_is_a_setting():
    mimic = {SPOT: 0.6}  # marked at both visits: matched
    found = classify(_scan_of(SMALL, mimic), _scan_of(SMALL, {**mimic, OTHER_SPOT: 0.9}), sitk.Transform())
    assert sorted(found["status"]) == ["new", "persistent"]
    strict = LongitudinalSettings(raised_probability=0.5)
    assert classify(_scan_of(SMALL, {SPOT: 0.3}), _scan_of(SMALL, {SPOT: 0.9}), sitk.Transform(),
                    strict)["status"].tolist() == ["new"]


@pytest.mark.parametrize("dark_at_baseline, expected", [((SPOT,), "persistent"), ((), "new")])
def test_a_detection_dark_at_both_visits_is_not_new_though_the_baseline_map_is_flat(dark_at_baseline, expected):
    # a vein the model marks at the follow-up only: the baseline's probability is 0, its T2* scan as dark
    found = classify(_scan_of(SMALL, {}, dark=dark_at_baseline), _scan_of(SMALL, {SPOT: 0.9}, dark=(SPOT,)),
                     sitk.Transform())
    assert found[["status", "baseline_probability"]].values.tolist() == [[expected, 0.0]]
    assert found["follow_up_darkness"].iloc[0] == pytest.approx(0.6, abs=0.05)


@pytest.mark.parametrize("dark_at_follow_up, expected", [((SPOT,), "persistent"), ((), "resolved")])
def test_a_detection_dark_at_both_visits_has_not_resolved(dark_at_follow_up, expected):
    found = classify(_scan_of(SMALL, {SPOT: 0.9}, dark=(SPOT,)), _scan_of(SMALL, {}, dark=dark_at_follow_up),
                     sitk.Transform())
    assert found["status"].tolist() == [expected]


def test_a_microbleed_outside_the_other_visits_brain_is_not_covered():
    brain = np.ones(sitk.GetArrayViewFromImage(SMALL).shape, bool)
    brain[:, :, 20:] = False  # the baseline's field of view ends short of the spot (x > 9 mm)
    far = (14.0, 0.0, 0.0)
    found = classify(_scan_of(SMALL, {}, brain), _scan_of(SMALL, {far: 0.9}), sitk.Transform())
    assert found["status"].tolist() == ["not covered"]


@pytest.mark.parametrize("new, grade", [(0, "none"), (1, "mild"), (4, "mild"), (5, "moderate"), (9, "moderate"),
                                        (10, "severe")])
def test_aria_h_grade_boundaries(new, grade):
    places = {(-24.0 + 6 * (i % 9), -12.0 + 12 * (i // 9), 0.0): 0.9 for i in range(new)}
    found = classify(_scan_of(SMALL, {}), _scan_of(SMALL, places), sitk.Transform())
    assert (found["status"] == "new").sum() == new
    assert longitudinal._counts(found)["aria_h_microhemorrhage_grade"] == grade == aria_h_grade(new)


def test_a_pair_without_probability_maps_is_an_error_that_names_the_option(tmp_path, head):
    output_dir, input_dir = tmp_path / "out", tmp_path / "in"
    scan = _scan(head, _grid((2.0, 2.0, 2.0), (56, 56, 44)), sitk.Transform(), seed=1)
    write_visit(output_dir, input_dir, "1", scan, {STAYS: 0.9}, probabilities=False)
    write_visit(output_dir, input_dir, "2", scan, {STAYS: 0.9})
    rows = compare_visits(output_dir, input_dir)
    assert rows[0]["status"] == "error" and "--save-probabilities" in rows[0]["message"]
    assert longitudinal.main(output_dir, input_dir) == 1


def test_the_baseline_is_the_first_acquired_else_the_first_in_session_order(tmp_path):
    output_dir, input_dir = tmp_path / "out", tmp_path / "in"
    small = _grid((4.0, 4.0, 4.0), (8, 8, 8))
    for session in ("2", "10", "1b"):
        write_visit(output_dir, input_dir, session, small + 1, {})
    series = find_series(output_dir, input_dir)
    assert [v.session for v in series[0].visits] == ["1b", "2", "10"] and series[0].baseline_by == "session order"
    for session, when in (("2", "2024-03-01T10:00:00"), ("10", "2023-09-15T08:30:00"), ("1b", "2024-01-01T00:00:00")):
        image = input_dir / layout.input_name(layout.case_stem("01", session), layout.REFERENCE_CHANNEL)
        (input_dir / layout.sidecar_name(image.name)).write_text(json.dumps({"AcquisitionDateTime": when}))
    series = find_series(output_dir, input_dir)
    assert [v.session for v in series[0].visits] == ["10", "1b", "2"] and series[0].baseline_by == "AcquisitionDateTime"
    assert longitudinal._interval_days(*series[0].visits[:2]) == pytest.approx(107.6, abs=0.1)
    assert find_series(output_dir, input_dir, ("sub-02",)) == [] and len(find_series(output_dir, input_dir, ("01",))) == 1


def test_a_run_knows_when_its_cases_make_a_series():
    case = lambda subject, session, acquisition="": Case(layout.bids_case_id(
        {"subject": subject, "session": session, "acquisition": acquisition}), subject, session, {}, {})
    assert has_series([case("01", "1"), case("01", "2"), case("02", None)])
    assert not has_series([case("01", "1"), case("02", "2"), case("03", None)])
    assert not has_series([case("01", "1", "swi"), case("01", "2", "gre")])  # two series, a session each


def test_a_bids_derivatives_dataset_names_its_raw_dataset(tmp_path):
    from conftest import write_bids_dataset

    from mixmicrobleednet.bids import write_derivatives_description

    raw = write_bids_dataset(tmp_path / "raw", visits=(("02", "1"), ("02", "2")), shape=(8, 8, 8))
    output_dir = tmp_path / "derivatives"
    write_derivatives_description(output_dir, raw)
    assert longitudinal.raw_dataset(output_dir) == raw.resolve()
    for session in ("1", "2"):
        case_id = layout.bids_case_id({"subject": "02", "session": session})
        records.write_record(output_dir, Case(case_id, "02", session, {}, {"record": layout.bids_output_paths(
            {"subject": "02", "session": session})["record"]}), {"case_id": case_id, "subject": "02",
                                                                 "session": session, "status": "ok"})
    (series,) = find_series(output_dir, longitudinal.raw_dataset(output_dir))
    assert [v.t2s_path.name for v in series.visits] == ["sub-02_ses-1_T2starw.nii.gz", "sub-02_ses-2_T2starw.nii.gz"]


def test_a_visit_pair_phantom_shows_each_microbleed_at_the_visits_its_status_says():
    from mixmicrobleednet.phantoms import COHORTS, make_visit_pair

    baseline, follow_up, truth = make_visit_pair((COHORTS["lowres"],) * 2, {"persistent": 2, "new": 2, "resolved": 1},
                                                 np.random.default_rng(5))
    assert sorted(row["status"] for row in truth) == ["new", "new", "persistent", "persistent", "resolved"]
    for (channels, label, _, _, mimics), shown, place in ((baseline, ("persistent", "resolved"), "baseline_lps"),
                                                          (follow_up, ("persistent", "new"), "follow_up_lps")):
        labels = sitk.GetArrayViewFromImage(label)
        for row in truth:
            k, j, i = np.array(label.TransformPhysicalPointToIndex(row[place]))[::-1]
            assert labels[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2].any() == (row["status"] in shown), row
        assert channels["T2S"].GetSize() == label.GetSize()
    assert baseline[0]["T2S"].GetSize() != follow_up[0]["T2S"].GetSize()  # another grid
    moved = [np.linalg.norm(np.subtract(row["follow_up_lps"], row["baseline_lps"])) for row in truth]
    assert min(moved) > 1.0  # the head moved between the visits
    kinds = [set(np.unique(sitk.GetArrayViewFromImage(visit[4]))) for visit in (baseline, follow_up)]
    assert kinds[0] == kinds[1] and len(kinds[0]) > 1  # the same mimics at both visits


def test_the_command_says_when_there_is_nothing_to_compare_or_no_input_folder(tmp_path):
    output_dir, input_dir = tmp_path / "out", tmp_path / "in"
    write_visit(output_dir, input_dir, "1", _grid((4.0, 4.0, 4.0), (8, 8, 8)) + 1, {})  # one session only
    from mixmicrobleednet.cli import main as cli_main

    assert cli_main(["longitudinal", str(output_dir), "-i", str(input_dir)]) == 1
    assert not (output_dir / layout.LONGITUDINAL_TSV).exists()
    assert longitudinal.main(output_dir, input_dir, expected=False) == 0  # the BIDS group level without sessions
    assert longitudinal.main(output_dir) == 2  # a seed-layout output folder does not name its inputs


@pytest.mark.shipped
def test_a_bids_dataset_with_two_sessions_through_participant_and_group_levels(tmp_path):
    """A visit-pair phantom as a BIDS dataset whose ses-2 was acquired a year before ses-1: the
    participant level saves the probability maps unasked, the group level writes cohort.tsv and the
    comparison (ses-2 the baseline), and the derivatives stay valid BIDS."""
    from conftest import write_bids_dataset
    from test_bids import validator_errors

    from mixmicrobleednet.cli import main as cli_main
    from mixmicrobleednet.phantoms import VISIT_MICROBLEEDS_CSV, generate_visit_pairs

    (pair,) = generate_visit_pairs(tmp_path / "phantoms", 1, 3410, ["lowres"])
    assert (pair["persistent"], pair["new"], pair["resolved"]) == (2, 0, 3)  # so 3 new from ses-2 to ses-1
    raw = write_bids_dataset(tmp_path / "raw", visits=(("01", "1"), ("01", "2")), shape=(4, 4, 4))
    for session, acquired in (("1", "2025-06-02T09:30:00"), ("2", "2024-06-02T09:30:00")):
        for channel in layout.CHANNELS:
            image = raw / layout.bids_anat_dir("01", session) / layout.bids_image_name("01", session, channel)
            phantom = tmp_path / "phantoms" / layout.input_name(layout.case_stem(pair["subject"], session), channel)
            image.write_bytes(phantom.read_bytes())
            sidecar = image.with_name(layout.sidecar_name(image.name))
            sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | {"AcquisitionDateTime": acquired}))
    out = tmp_path / "derivatives"
    assert cli_main(["bids", str(raw), str(out), "participant", "--device", "cpu", "--fast"]) == 0
    for session in ("1", "2"):
        assert (out / layout.bids_output_paths({"subject": "01", "session": session})["probability"]).is_file()
    assert cli_main(["bids", str(raw), str(out), "group"]) == 0

    (row,) = pd.read_csv(out / layout.LONGITUDINAL_TSV, sep="\t", dtype={"baseline": str, "follow_up": str}).to_dict("records")
    assert (row["baseline"], row["follow_up"], row["baseline_by"]) == ("2", "1", "AcquisitionDateTime")
    assert row["interval_days"] == 365 and row["status"] == "ok"
    # The phantom's microbleeds shown at its first visit only (ses-1) are the new ones; ses-1's centres,
    # LPS to RAS. Each one called new is one of them (no false new), and the 3-mm one may be missed.
    truth = pd.read_csv(tmp_path / "phantoms" / VISIT_MICROBLEEDS_CSV)
    truly_new = truth.loc[truth["status"] == "resolved", ["baseline_x_lps", "baseline_y_lps", "baseline_z_lps"]]
    truly_new = truly_new.to_numpy() * [-1, -1, 1]
    microbleeds = pd.read_csv(out / layout.LONGITUDINAL_MICROBLEEDS_TSV, sep="\t")
    called_new = microbleeds.loc[microbleeds["status"] == "new", ["follow_up_x_ras_mm", "follow_up_y_ras_mm",
                                                                  "follow_up_z_ras_mm"]].to_numpy()
    assert row["new"] == len(called_new) >= 2 and row["resolved"] == 0 and row["aria_h_microhemorrhage_grade"] == "mild"
    assert (cdist(called_new, truly_new).min(axis=1) < 3.0).all()
    assert (microbleeds["seen_at"] == "both").sum() == 2  # the two persistent microbleeds, matched
    paths = layout.longitudinal_paths(row["follow_up_case"])
    assert (out / paths["qc"]).is_file()
    assert "registration" in json.loads((out / paths["record"]).read_text())
    assert validator_errors(out) == []
