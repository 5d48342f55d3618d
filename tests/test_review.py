"""The review workspace (#33): a rater's decisions as data (atomic, per rater, stale when the mask
changed, bad files reported), the values and the reviewed mask a review gives, agreement between
raters, the app's API (no file outside the output folder), the export; and, tier `browser`, the app
in Debian's chromium on a run of the shipped model over the shipped test case."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from mixmicrobleednet import agreement, decisions, layout, records
from mixmicrobleednet import lesions as lesion_module
from mixmicrobleednet.lesions import extract_lesions
from mixmicrobleednet.decisions import ReviewError, StaleReview

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CASE = layout.case_stem("r01")
SPACING_XYZ = (1.0, 1.0, 2.0)
#: The synthetic case's microbleeds, as voxel boxes (z, y, x) on a (10, 20, 20) grid: lesion ids 1-3.
COMPONENTS = ((slice(2, 3), slice(3, 5), slice(3, 5)), (slice(5, 7), slice(8, 9), slice(14, 15)),
              (slice(8, 9), slice(16, 17), slice(5, 6)))


def grid_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((-10.0, -10.0, -10.0))
    return image


def write_output(folder: Path, regions: bool = False, case_id: str = CASE) -> dict:
    """A seed-layout output folder with one finished case: mask, lesion table (made by the pipeline's
    own extraction; `regions`: a MARS region per lesion too), record; its T2* in folder/input."""
    probabilities = np.zeros((10, 20, 20), np.float32)
    for box in COMPONENTS:
        probabilities[box] = 0.9
    reference = grid_image(np.zeros((10, 20, 20), np.float32))
    lesions = extract_lesions(probabilities, reference)
    paths = layout.seed_output_paths(case_id)
    (folder / layout.IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(grid_image(lesions.mask), str(folder / paths["mask"]), True)
    table = lesions.with_world()
    if regions:
        table["region"] = ["frontal", "thalamus", "cerebellum"]
        table["region_category"] = ["lobar", "deep", "infratentorial"]
    table.to_csv(folder / paths["lesions"], index=False, float_format="%.3f")
    (folder / "input").mkdir(exist_ok=True)
    t2s_name = layout.input_name(case_id, layout.REFERENCE_CHANNEL)
    sitk.WriteImage(grid_image(100 - 90 * probabilities), str(folder / "input" / t2s_name), True)
    record = {"record_version": 1, "case_id": case_id, "subject": "r01", "session": None, "status": "ok",
              "error_messages": [], "inputs": [{"channel": "T2S", "file": t2s_name, "size": 1, "mtime_ns": 1}],
              "model": {"name": "test-model"}, "regions": None, "microbleed_count": 3,
              "outputs": {kind: paths[kind] for kind in ("mask", "lesions")}}
    (folder / paths["record"]).parent.mkdir(exist_ok=True)
    (folder / paths["record"]).write_text(json.dumps(record))
    return record


def review_file(folder: Path, rater: str, case_id: str = CASE) -> Path:
    return folder / layout.review_path(case_id, rater)


def test_every_decision_is_written_atomically_with_its_time_rater_version_and_mask_checksum(tmp_path, monkeypatch):
    record = write_output(tmp_path)
    decisions.record_decision(tmp_path, record, "alice", 1, "accept")
    written = json.loads(review_file(tmp_path, "alice").read_text())
    assert written["detections"]["1"]["decision"] == "accept" and written["detections"]["1"]["time"]
    assert written["rater"] == "alice" and written["case_id"] == CASE and written["package_version"] == "1.0.0"
    assert written["mask_sha256"] == decisions.file_sha256(tmp_path / record["outputs"]["mask"])
    before = review_file(tmp_path, "alice").read_bytes()
    mask_before = (tmp_path / record["outputs"]["mask"]).read_bytes()

    # a writer killed before the rename leaves the previous review whole and no partial behind
    def killed(*args):
        raise OSError("killed")

    monkeypatch.setattr("mixmicrobleednet.files.os.replace", killed)
    with pytest.raises(OSError, match="killed"):
        decisions.record_decision(tmp_path, record, "alice", 2, "reject")
    assert review_file(tmp_path, "alice").read_bytes() == before
    assert sorted(p.name for p in review_file(tmp_path, "alice").parent.iterdir()) == ["alice.json"]
    assert (tmp_path / record["outputs"]["mask"]).read_bytes() == mask_before  # the tool's output untouched


def test_two_raters_and_many_tabs_of_one_rater_never_lose_a_decision(tmp_path):
    record = write_output(tmp_path)
    changes = [("alice", 1, "accept"), ("alice", 2, "reject"), ("alice", 3, "unsure"),
               ("bob", 1, "reject"), ("bob", 2, "accept"), ("bob", 3, "accept")] * 4
    with ThreadPoolExecutor(8) as pool:  # the same rater's writes race each other: the case's lock
        list(pool.map(lambda c: decisions.record_decision(tmp_path, record, *c), changes))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: decisions.add_microbleed(tmp_path, record, "alice", (float(n), 0.0, 0.0)), range(6)))
    alice = json.loads(review_file(tmp_path, "alice").read_text())
    bob = json.loads(review_file(tmp_path, "bob").read_text())
    assert {k: v["decision"] for k, v in alice["detections"].items()} == {"1": "accept", "2": "reject", "3": "unsure"}
    assert {k: v["decision"] for k, v in bob["detections"].items()} == {"1": "reject", "2": "accept", "3": "accept"}
    assert sorted(a["added_id"] for a in alice["added"]) == [1, 2, 3, 4, 5, 6]
    assert sorted(a["x_ras_mm"] for a in alice["added"]) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    decisions.record_decision(tmp_path, record, "alice", 3, None)  # a decision taken back
    assert "3" not in json.loads(review_file(tmp_path, "alice").read_text())["detections"]
    with pytest.raises(ReviewError, match="no lesion 9"):
        decisions.record_decision(tmp_path, record, "alice", 9, "accept")
    with pytest.raises(ReviewError, match="a decision is"):
        decisions.record_decision(tmp_path, record, "alice", 1, "maybe")
    for name in ("../alice", "", "a/b", ".hidden", "x" * 65):
        with pytest.raises(ReviewError, match="rater's name"):
            decisions.record_decision(tmp_path, record, name, 1, "accept")


def test_a_review_of_an_earlier_mask_is_stale_shown_never_applied_and_can_be_started_again(tmp_path):
    record = write_output(tmp_path)
    decisions.record_decision(tmp_path, record, "alice", 1, "accept")
    decisions.set_done(tmp_path, record, "alice", True)
    assert decisions.reviewed_values(tmp_path, record)["review_status"] == "done"
    old_checksum = json.loads(review_file(tmp_path, "alice").read_text())["mask_sha256"]
    mask_path = tmp_path / record["outputs"]["mask"]
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path)))
    mask[0, 0, 0] = 1  # the case ran again and its mask changed
    sitk.WriteImage(grid_image(mask), str(mask_path), True)

    reviews = decisions.read_reviews(tmp_path, record)
    assert set(reviews.stale) == {"alice"} and not reviews.current and not reviews.problems
    assert reviews.status("alice") == "stale"
    values = decisions.reviewed_values(tmp_path, record)
    assert values["review_status"] == "stale" and values["stale_reviews"] == 1
    assert values["reviewed_count"] is None and values["reviewed_by"] is None
    with pytest.raises(StaleReview):
        decisions.record_decision(tmp_path, record, "alice", 2, "reject")
    with pytest.raises(ReviewError, match="earlier mask"):
        decisions.write_reviewed_mask(tmp_path, record, reviews.stale["alice"])
    assert json.loads(review_file(tmp_path, "alice").read_text())["mask_sha256"] == old_checksum  # unchanged

    decisions.start_again(tmp_path, record, "alice")
    assert (tmp_path / layout.superseded_review_path(CASE, "alice", old_checksum)).is_file()
    decisions.record_decision(tmp_path, record, "alice", 2, "reject")
    reviews = decisions.read_reviews(tmp_path, record)
    assert set(reviews.current) == {"alice"} and not reviews.stale and not reviews.problems
    assert reviews.current["alice"]["detections"].keys() == {"2"}


def test_bad_and_foreign_review_files_are_reported_never_fatal(tmp_path):
    from starlette.testclient import TestClient

    from mixmicrobleednet.review.app import Workspace, create_app

    record = write_output(tmp_path)
    decisions.record_decision(tmp_path, record, "alice", 1, "accept")
    folder = review_file(tmp_path, "alice").parent
    good = json.loads(review_file(tmp_path, "alice").read_text())
    (folder / "notes.txt").write_text("not a review")
    (folder / "bob.json").write_text("{not json")
    (folder / "carol.json").write_text(json.dumps(good))  # alice's review under another name
    (folder / "dave.json").write_text(json.dumps(good | {"rater": "dave", "detections": {"1": {"decision": "maybe"}}}))
    (folder / "eve.json").write_text(json.dumps(good | {"rater": "eve", "detections": {"9": {"decision": "accept"}}}))
    (folder / "frank.json").write_text(json.dumps(good | {"rater": "frank", "added": [{"added_id": 1, "x_ras_mm": "a"}]}))
    (folder / "grace.json").write_text(json.dumps([1, 2]))
    (tmp_path / layout.REVIEWS_DIR / "sub-unknown_space-T2S").mkdir()

    reviews = decisions.read_reviews(tmp_path, record)
    assert set(reviews.current) == {"alice"}
    problems = "\n".join(reviews.problems)
    for name, why in (("notes.txt", "not a review file"), ("bob.json", "Expecting"), ("carol.json", "by 'alice'"),
                      ("dave.json", "accept, reject, unsure"), ("eve.json", "the table does not have: [9]"),
                      ("frank.json", "finite RAS"), ("grace.json", "not a review")):
        assert re.search(rf"{re.escape(name)}: .*{re.escape(why)}", problems), (name, problems)
    assert decisions.reviewed_values(tmp_path, record)["review_problems"] == 7
    cohort = TestClient(create_app(Workspace(tmp_path, "alice", tmp_path / "input")),
                        base_url="http://127.0.0.1").get("/api/cohort")
    assert cohort.status_code == 200
    assert cohort.json()["problems"] == ["reviews/sub-unknown_space-T2S: not the review folder of a case here"]
    assert len(cohort.json()["cases"][0]["problems"]) == 7
    # a rater whose own file is bad is told, and the file is left for them to look at
    with pytest.raises(ReviewError, match="move it away"):
        decisions.record_decision(tmp_path, record, "bob", 1, "accept")
    assert (folder / "bob.json").read_text() == "{not json"


def test_the_viewer_gets_a_cube_around_a_detection_where_it_lies_in_the_scan(tmp_path):
    """The case page's viewer loads a cube of the T2* and the mask around the selected detection, at
    full resolution and placed in the scan's world, not the whole scan (views.py)."""
    from starlette.testclient import TestClient

    from mixmicrobleednet.review.app import Workspace, create_app
    from mixmicrobleednet.review.views import VIEW_MM

    record = write_output(tmp_path)
    client = TestClient(create_app(Workspace(tmp_path, "alice", tmp_path / "input")), base_url="http://127.0.0.1")
    page = client.get(f"/api/cases/{CASE}").json()
    assert page["view"]["size_mm"] == VIEW_MM
    table = decisions.detections(tmp_path, record)
    x, y, z = table.loc[1, lesion_module.WORLD_COLUMNS]
    for kind in ("mask", "t2s"):
        response = client.get(f"{page['view']['url']}/{kind}", params={"x": x, "y": y, "z": z, "ahead": "nosuchcase"})
        assert response.status_code == 200
        (tmp_path / f"{kind}.nii").write_bytes(response.content)
    cube, mask = (sitk.ReadImage(str(tmp_path / f"{kind}.nii")) for kind in ("t2s", "mask"))
    whole = sitk.ReadImage(str(tmp_path / record["outputs"]["mask"]))
    assert cube.GetSpacing() == whole.GetSpacing() and mask.GetSize() == cube.GetSize()
    # every voxel of the cube is the scan's voxel at the same place
    index = np.array(whole.TransformPhysicalPointToIndex(mask.GetOrigin()))
    size = np.array(mask.GetSize())
    box = tuple(slice(i, i + n) for i, n in zip(index[::-1], size[::-1]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(whole)[box])
    assert sitk.GetArrayFromImage(mask)[tuple(np.array(mask.TransformPhysicalPointToIndex((-x, -y, z)))[::-1])] == 1
    t2s = sitk.ReadImage(str(tmp_path / "input" / record["inputs"][0]["file"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(cube), sitk.GetArrayFromImage(t2s)[box])
    # a cube smaller than the scan: cut out of it where it lies, clipped at the scan's edge
    from mixmicrobleednet.review.views import CaseImages

    (tmp_path / "small.nii").write_bytes(CaseImages().cube({"mask": tmp_path / record["outputs"]["mask"]}, "mask",
                                                           (x, y, z), size_mm=6.0))
    small = sitk.ReadImage(str(tmp_path / "small.nii"))
    start = np.array(whole.TransformPhysicalPointToIndex(small.GetOrigin()))
    assert tuple(small.GetSize()) == (7, 7, 5) and (start >= 0).all()
    box = tuple(slice(i, i + n) for i, n in zip(start[::-1], small.GetSize()[::-1]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(small), sitk.GetArrayFromImage(whole)[box])
    assert client.get(f"{page['view']['url']}/mask", params={"x": "a"}).status_code == 400
    assert client.get(f"{page['view']['url']}/probability", params={"x": x, "y": y, "z": z}).status_code == 404


def test_the_app_serves_nothing_outside_the_output_folder(tmp_path):
    from starlette.testclient import TestClient

    from mixmicrobleednet.review.app import Workspace, create_app

    output = tmp_path / "out"
    record = write_output(output)
    (tmp_path / "secret.nii.gz").write_bytes(b"SECRET CONTENT")
    # a second case whose record points out of the folder, by .., by an absolute path and by a link
    other = write_output(output, case_id=layout.case_stem("r02"))
    (output / layout.IMAGES_DIR / "link.png").symlink_to(tmp_path / "secret.nii.gz")
    other["outputs"] |= {"mask": "../secret.nii.gz", "qc": str(tmp_path / "secret.nii.gz"),
                         "probability": f"{layout.IMAGES_DIR}/link.png"}
    (output / layout.seed_output_paths(other["case_id"])["record"]).write_text(json.dumps(other))
    client = TestClient(create_app(Workspace(output, "alice", output / "input")), base_url="http://127.0.0.1")

    assert client.get(f"/api/cases/{CASE}/outputs/mask").content == (output / record["outputs"]["mask"]).read_bytes()
    assert client.get(f"/api/cases/{CASE}/t2s").status_code == 200
    for url in (f"/api/cases/{other['case_id']}/outputs/mask", f"/api/cases/{other['case_id']}/outputs/qc",
                f"/api/cases/{other['case_id']}/outputs/probability", f"/api/cases/{CASE}/outputs/record",
                f"/api/cases/{CASE}/outputs/lesions", "/api/cases/..%2F..%2Fsecret.nii.gz/outputs/mask",
                "/api/cases/../../secret.nii.gz", "/static/../../secret.nii.gz", "/static/..%2F..%2Fdecisions.py",
                "/static/%2e%2e/app.py", f"/api/cases/{CASE}/outputs/..%2F..%2Fsecret.nii.gz"):
        response = client.get(url)
        assert response.status_code == 404 and b"SECRET CONTENT" not in response.content, url
    assert client.get("/static/niivue.js").status_code == 200
    assert client.get(f"/api/cases/{other['case_id']}").json()["messages"]  # shown, not served
    # changes: JSON only (no form post from another site), for a known case, from a loopback host name
    assert client.post(f"/api/cases/{CASE}/decision", content='{"lesion_id": 1, "decision": "accept"}',
                       headers={"Content-Type": "text/plain"}).status_code == 415
    assert client.post("/api/cases/nosuchcase/decision", json={"lesion_id": 1, "decision": "accept"}).status_code == 404
    assert client.get("/api/cohort", headers={"Host": "evil.example:8765"}).status_code == 400
    answer = client.post(f"/api/cases/{CASE}/decision", json={"lesion_id": 1, "decision": "accept"})
    assert answer.status_code == 200 and answer.json()["review"]["detections"]["1"]["decision"] == "accept"
    assert client.post(f"/api/cases/{CASE}/decision", json={"lesion_id": "x"}).status_code == 400
    assert client.post(f"/api/cases/{CASE}/nosuchchange", json={}).status_code == 404


def test_reviewed_values_count_the_latest_finished_review(tmp_path):
    record = write_output(tmp_path, regions=True)
    assert decisions.reviewed_values(tmp_path, record) == dict.fromkeys(decisions.REVIEW_COLUMNS) | {
        "review_status": "not reviewed", "stale_reviews": 0, "review_problems": 0}
    for lesion_id, decision in ((1, "accept"), (2, "reject"), (3, "unsure")):
        decisions.record_decision(tmp_path, record, "alice", lesion_id, decision)
    assert decisions.reviewed_values(tmp_path, record)["review_status"] == "in progress"

    def added(region_category):
        return lambda review: review["added"].append(
            {"added_id": len(review["added"]) + 1, "x_ras_mm": 1.0, "y_ras_mm": 2.0, "z_ras_mm": 3.0,
             "region": None, "region_category": region_category})

    decisions.change_review(tmp_path, record, "alice", added("lobar"))
    decisions.set_done(tmp_path, record, "alice", True)
    values = decisions.reviewed_values(tmp_path, record)
    assert values == {"review_status": "done", "reviewed_by": "alice", "review_rater": "alice",
                      "review_done": values["review_done"], "reviewed_accepted": 1, "reviewed_rejected": 1,
                      "reviewed_unsure": 1, "reviewed_undecided": 0, "reviewed_added": 1, "reviewed_count": 2,
                      "reviewed_count_lobar": 2, "reviewed_count_deep": 0, "reviewed_count_infratentorial": 0,
                      "reviewed_strictly_lobar": True, "stale_reviews": 0, "review_problems": 0}
    assert list(values) == decisions.REVIEW_COLUMNS

    # bob finishes later: his review gives the values; an added microbleed without a region leaves
    # the categories unknown rather than wrong
    decisions.record_decision(tmp_path, record, "bob", 2, "accept")
    decisions.change_review(tmp_path, record, "bob", added(None))
    review = json.loads(review_file(tmp_path, "alice").read_text())
    review["done"] = "2000-01-01T00:00:00+00:00"  # alice finished long ago
    review_file(tmp_path, "alice").write_text(json.dumps(review))
    decisions.set_done(tmp_path, record, "bob", True)
    values = decisions.reviewed_values(tmp_path, record)
    assert (values["reviewed_by"], values["review_rater"], values["reviewed_accepted"], values["reviewed_undecided"],
            values["reviewed_count"]) == ("alice bob", "bob", 1, 2, 2)
    assert values["reviewed_count_deep"] is None and values["reviewed_strictly_lobar"] is None


def test_a_rater_counts_a_mark_the_run_set_aside_once_and_the_counts_follow(tmp_path):
    """What the edge rule and the mimic check set aside is listed on the case page and in the export;
    a rater may count one (at its recorded centre, once), and it counts as an added microbleed."""
    from starlette.testclient import TestClient

    from mixmicrobleednet.review.app import Workspace, create_app
    from mixmicrobleednet.review.export import case_page

    record = write_output(tmp_path)
    near = {"centroid_x_ras_mm": 4.5, "centroid_y_ras_mm": 6.25, "centroid_z_ras_mm": 8.0, "volume_mm3": 6.0,
            "max_probability": 0.97}
    mimic = {"centroid_x_ras_mm": -3.0, "centroid_y_ras_mm": -1.5, "centroid_z_ras_mm": 2.0, "volume_mm3": 12.0,
             "max_probability": 0.88, "calibrated_probability": 0.12}
    record |= {"edge_rule": {"edge_margin_mm": 2.0, "near_edge": [near]}, "mimic_check": {"cut": 0.5, "mimics": [mimic]}}
    (tmp_path / layout.seed_output_paths(CASE)["record"]).write_text(json.dumps(record))

    def point(mark):
        return tuple(mark[c] for c in lesion_module.WORLD_COLUMNS)

    assert [(m["set_aside"], point(m)) for m in decisions.set_aside_marks(record)] == [
        ("edge rule", point(near)), ("mimic check", point(mimic))]
    client = TestClient(create_app(Workspace(tmp_path, "alice", tmp_path / "input")), base_url="http://127.0.0.1")
    listed = client.get(f"/api/cases/{CASE}").json()["set_aside"]
    assert [(m["set_aside"], m.get("edge_margin_mm"), m.get("cut")) for m in listed] == [
        ("edge rule", 2.0, None), ("mimic check", None, 0.5)]
    x, y, z = point(near)
    answer = client.post(f"/api/cases/{CASE}/added", json={"x_ras_mm": x, "y_ras_mm": y, "z_ras_mm": z,
                                                           "set_aside": "edge rule"})
    assert answer.status_code == 200
    (counted,) = answer.json()["review"]["added"]
    assert (counted["set_aside"], point({f"centroid_{k}": counted[k] for k in ("x_ras_mm", "y_ras_mm", "z_ras_mm")})) \
        == ("edge rule", point(near))
    again = client.post(f"/api/cases/{CASE}/added", json={"x_ras_mm": x, "y_ras_mm": y, "z_ras_mm": z,
                                                          "set_aside": "edge rule"})
    assert again.status_code == 400 and "already" in again.json()["error"]
    for where, step, problem in ((point(mimic), "edge rule", "set no mark aside"),
                                 ((0.0, 0.0, 0.0), "mimic check", "set no mark aside"),
                                 (point(mimic), "vessel filter", "not a step")):
        with pytest.raises(ReviewError, match=problem):
            decisions.add_microbleed(tmp_path, record, "alice", where, step)
    decisions.add_microbleed(tmp_path, record, "alice", point(mimic), "mimic check")
    decisions.add_microbleed(tmp_path, record, "alice", (0.0, -2.0, 0.0))  # a click
    decisions.record_decision(tmp_path, record, "alice", 1, "accept")
    decisions.set_done(tmp_path, record, "alice", True)
    values = decisions.reviewed_values(tmp_path, record)
    assert (values["reviewed_accepted"], values["reviewed_added"], values["reviewed_count"]) == (1, 3, 4)
    page = case_page(tmp_path, record, tmp_path / "input")
    assert "Set aside by the run" in page and page.count("set aside (") == 2 and "<td>click</td>" in page

    # a review whose added microbleed names no such step is a problem, not applied
    review = json.loads(review_file(tmp_path, "alice").read_text())
    review["added"][0]["set_aside"] = "vessel filter"
    review_file(tmp_path, "alice").write_text(json.dumps(review))
    reviews = decisions.read_reviews(tmp_path, record)
    assert not reviews.current and "set_aside" in reviews.problems[0]


def test_reviewed_mask_holds_the_accepted_components_and_a_3_mm_ball_per_added_microbleed(tmp_path):
    record = write_output(tmp_path)
    decisions.record_decision(tmp_path, record, "alice", 1, "accept")
    decisions.record_decision(tmp_path, record, "alice", 2, "reject")
    decisions.record_decision(tmp_path, record, "alice", 3, "accept")
    # voxel (x 10, y 12, z 5) is LPS (0, 2, 0), RAS (0, -2, 0): on the 1 x 1 x 2 mm grid a 1.5 mm ball
    # around a voxel centre holds its 3 x 3 neighbours in the slice (diagonal 1.41 mm) and no other slice
    decisions.add_microbleed(tmp_path, record, "alice", (0.0, -2.0, 0.0))
    decisions.add_microbleed(tmp_path, record, "alice", (500.0, 0.0, 0.0))  # off the grid: nothing drawn
    review = decisions.set_done(tmp_path, record, "alice", True)
    path = tmp_path / layout.reviewed_mask_path(CASE, "alice")
    assert path.is_file()  # written when the case was marked done
    assert decisions.write_reviewed_mask(tmp_path, record, review) == path

    expected = np.zeros((10, 20, 20), np.uint8)
    expected[COMPONENTS[0]] = expected[COMPONENTS[2]] = 1
    expected[5, 11:14, 9:12] = 1
    written = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(written), expected)
    mask = sitk.ReadImage(str(tmp_path / record["outputs"]["mask"]))
    assert written.GetPixelID() == sitk.sitkUInt8
    assert (written.GetSpacing(), written.GetOrigin(), written.GetDirection()) == \
        (mask.GetSpacing(), mask.GetOrigin(), mask.GetDirection())
    # not done any more: no reviewed mask
    decisions.set_done(tmp_path, record, "alice", False)
    assert not path.exists()


def test_kappa_and_icc_on_numbers_worked_by_hand():
    # observed 3/4; chance 1/2 x 1/4 + 1/2 x 3/4 = 1/2; kappa (3/4 - 1/2) / (1 - 1/2) = 1/2
    assert agreement.cohen_kappa(["accept", "accept", "reject", "reject"],
                                 ["accept", "reject", "reject", "reject"]) == pytest.approx(0.5)
    # observed 1/3; chance 1/3 x 1/3 x 3 = 1/3: no better than chance
    assert agreement.cohen_kappa(["accept", "reject", "unsure"], ["reject", "unsure", "unsure"]) == \
        pytest.approx((1 / 3 - (1 / 3 * 0 + 1 / 3 * 1 / 3 + 1 / 3 * 2 / 3)) / (1 - 1 / 3))
    assert agreement.cohen_kappa(["accept"] * 3, ["accept"] * 3) is None  # chance agreement certain
    assert agreement.cohen_kappa([], []) is None
    # Shrout & Fleiss (1979), table 2: six targets, four judges; ICC(2,1) = 0.29
    table = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert agreement.icc_agreement(table) == pytest.approx(0.2898, abs=1e-4)
    # two raters who agree exactly: 1; one case: none
    assert agreement.icc_agreement([[1, 1], [3, 3], [5, 5]]) == pytest.approx(1.0)
    assert agreement.icc_agreement([[1, 2]]) is None


def test_agreement_between_two_raters_per_case_and_over_the_cases(tmp_path):
    outputs = [write_output(tmp_path, case_id=layout.case_stem(s)) for s in ("a1", "a2", "a3")]
    plan = {"alice": [("accept", "accept", "reject"), ("accept", "reject", "reject"), ("accept", "accept", "accept")],
            "bob": [("accept", "reject", "reject"), ("accept", "reject", "reject"), ("accept", "accept", "unsure")]}
    for rater, cases in plan.items():
        for record, choices in zip(outputs, cases):
            for lesion_id, decision in enumerate(choices, 1):
                decisions.record_decision(tmp_path, record, rater, lesion_id, decision)
            decisions.set_done(tmp_path, record, rater, True)
    found = agreement.agreement(tmp_path, outputs)
    case_ids = [r["case_id"] for r in outputs]
    # counts (accepted): alice 2, 1, 3; bob 1, 1, 2
    assert [case["counts"] for case in found["cases"]] == [{"alice": 2, "bob": 1}, {"alice": 1, "bob": 1},
                                                          {"alice": 3, "bob": 2}]
    assert found["cases"][1]["pairs"][0]["kappa"] == pytest.approx(1.0)
    (pair,) = found["pairs"]
    assert (pair["raters"], pair["cases"], pair["detections"]) == (["alice", "bob"], 3, 9)
    alice = ["accept", "accept", "reject", "accept", "reject", "reject", "accept", "accept", "accept"]
    bob = ["accept", "reject", "reject", "accept", "reject", "reject", "accept", "accept", "unsure"]
    assert pair["kappa"] == pytest.approx(agreement.cohen_kappa(alice, bob))
    # 7 of 9 agree; chance: accept 6/9 x 4/9, reject 3/9 x 4/9, unsure 0 x 1/9
    assert pair["kappa"] == pytest.approx((7 / 9 - (24 + 12) / 81) / (1 - 36 / 81))
    assert pair["count_icc"] == pytest.approx(agreement.icc_agreement([[2, 1], [1, 1], [3, 2]]))

    # merge: the reviewed values in summary.csv, a row per case and rater, the agreement beside them
    records.merge(tmp_path)
    summary = pd.read_csv(tmp_path / layout.SUMMARY_CSV)
    assert [c for c in summary.columns if c in decisions.REVIEW_COLUMNS] == decisions.REVIEW_COLUMNS
    assert list(summary["review_status"]) == ["done"] * 3 and list(summary["reviewed_by"]) == ["alice bob"] * 3
    raters = pd.read_csv(tmp_path / layout.REVIEW_RATERS_TSV, sep="\t")
    assert list(zip(raters["case"], raters["rater"], raters["status"], raters["reviewed_count"])) == [
        (case_ids[0], "alice", "done", 2), (case_ids[0], "bob", "done", 1), (case_ids[1], "alice", "done", 1),
        (case_ids[1], "bob", "done", 1), (case_ids[2], "alice", "done", 3), (case_ids[2], "bob", "done", 2)]
    assert json.loads((tmp_path / layout.REVIEW_AGREEMENT_JSON).read_text()) == json.loads(json.dumps(found))


def test_the_command_line_exports_a_self_contained_page_per_reviewed_case(tmp_path, capsys):
    from mixmicrobleednet.cli import build_parser, main

    record = write_output(tmp_path)
    decisions.record_decision(tmp_path, record, "alice", 1, "accept")
    decisions.add_microbleed(tmp_path, record, "alice", (0.0, -2.0, 0.0))
    decisions.set_note(tmp_path, record, "alice", "a <b>bold</b> note")
    decisions.set_done(tmp_path, record, "alice", True)
    decisions.record_decision(tmp_path, record, "bob", 1, "reject")
    args = build_parser().parse_args(["review", str(tmp_path), "--rater", "bob", "--port", "0"])
    assert (args.rater, args.port, args.host, args.export, args.input) == ("bob", 0, "127.0.0.1", False, None)
    assert main(["review", str(tmp_path), "-i", str(tmp_path / "input"), "--export"]) == 0
    page = (tmp_path / layout.review_report_path(CASE)).read_text()
    assert page.count("data:image/png;base64,") == 1 + 3 + 1  # overview, three detections, one added
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched: readable offline
    assert "a &lt;b&gt;bold&lt;/b&gt; note" in page and "<b>bold" not in page
    assert re.search(r"<td>1</td>.*?<td>accept</td><td>reject</td>", page)  # lesion 1: alice, bob
    assert (tmp_path / layout.reviewed_mask_path(CASE, "alice")).is_file()
    assert not (tmp_path / layout.reviewed_mask_path(CASE, "bob")).exists()  # not done
    assert main(["review", str(tmp_path / "nothing")]) == 2


# --- the browser tier -------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory) -> Path:
    """The shipped model over the shipped test case (the CPU, no mirroring), regions on, with an edge
    rule wide enough (20 mm) to set one of its four detections aside."""
    from conftest import predict

    from mixmicrobleednet.lesions import LesionSettings
    from mixmicrobleednet.pipeline import OutputSettings

    output = tmp_path_factory.mktemp("shipped") / "out"
    (result,) = predict(REPO / "test" / "input", output, REPO / "models" / "phantom-t1-t2-t2s",
                        output=OutputSettings(lesions=LesionSettings(edge_margin_mm=20.0)))
    assert not result.error_messages, result.error_messages
    return output


@pytest.fixture
def app_address(shipped_run):
    """`mixmicrobleednet review` on the run (a free port), as a user starts it; its address."""
    server = subprocess.Popen([sys.executable, "-m", "mixmicrobleednet.cli", "review", str(shipped_run), "-i",
                               str(REPO / "test" / "input"), "--rater", "alice", "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        address = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert address, line
        yield address.group(0)
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.browser
def test_a_rater_reviews_the_shipped_case_in_chromium(shipped_run, app_address):
    from playwright.sync_api import expect, sync_playwright

    (record,) = records.read_records(shipped_run)
    case_id = record["case_id"]
    table = decisions.detections(shipped_run, record)
    assert len(table) >= 3
    errors = []
    with sync_playwright() as playwright:
        # SwiftShader: WebGL 2 on the CPU, as on a machine without a GPU
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--enable-unsafe-swiftshader", "--use-angle=swiftshader"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(120_000)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(app_address)
        expect(page.locator(f'#cases tr[data-case="{case_id}"]')).to_contain_text("not started")
        page.click(f'a[href="/cases/{case_id}"]')
        page.wait_for_selector("body[data-viewer=ready]")
        detections = page.locator("#detections tbody tr")
        expect(detections).to_have_count(len(table))
        expect(detections.nth(0)).to_have_class("selected")
        page.keyboard.press("a")  # lesion 1 accepted, lesion 2 selected
        expect(detections.nth(0).locator("td").last).to_have_text("accept")
        page.keyboard.press("r")
        expect(detections.nth(1).locator("td").last).to_have_text("reject")
        expect(detections.nth(2)).to_have_class("selected")
        page.wait_for_selector("body[data-viewer=ready]")  # a detection beyond the cube: a cube around it
        # the viewer is centred on the selected detection: NiiVue's crosshair at its RAS centroid
        crosshair = page.evaluate("Array.from(review.nv.frac2mm(review.nv.scene.crosshairPos, 0, true)).slice(0, 3)")
        assert np.allclose(crosshair, table.loc[2, ["centroid_x_ras_mm", "centroid_y_ras_mm", "centroid_z_ras_mm"]],
                           atol=1.5)
        # a missed microbleed: m, then a click in the middle of the axial view
        page.keyboard.press("m")
        where = page.evaluate("""() => {
            const nv = review.nv, box = nv.canvas.getBoundingClientRect(), dpr = nv.uiData.dpr;
            const [left, top, width, height] = nv.screenSlices.find((s) => s.axCorSag === 0).leftTopWidthHeight;
            return {x: box.left + (left + width / 2) / dpr, y: box.top + (top + height / 2) / dpr};
        }""")
        page.mouse.click(where["x"], where["y"])
        expect(page.locator("#added tbody tr")).to_have_count(1)
        # the mark the edge rule set aside: looked at (the viewer centres on it), then counted
        (near,) = record["edge_rule"]["near_edge"]
        set_aside = page.locator("#set-aside tbody tr")
        expect(set_aside).to_have_count(1)
        expect(set_aside).to_contain_text("edge rule: within 20 mm")
        set_aside.locator("td").first.click()  # beyond the cube shown: a cube around it, then the crosshair
        page.wait_for_function("""(mm) => {
            const at = review.nv.frac2mm(review.nv.scene.crosshairPos, 0, true);
            return document.body.dataset.viewer === "ready" && mm.every((v, i) => Math.abs(at[i] - v) <= 1.5);
        }""", arg=[near[c] for c in lesion_module.WORLD_COLUMNS])
        set_aside.locator("button").click()
        expect(set_aside.locator("button")).to_have_text("counted (#2)")
        expect(page.locator("#added tbody tr")).to_have_count(2)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review_case.png"))

        page.reload()  # the decisions are the server's: they come back
        page.wait_for_selector("body[data-viewer=ready]")
        expect(detections.nth(0).locator("td").last).to_have_text("accept")
        expect(detections.nth(1).locator("td").last).to_have_text("reject")
        expect(page.locator("#added tbody tr")).to_have_count(2)
        expect(set_aside.locator("button")).to_be_disabled()
        page.keyboard.press("d")
        expect(page.locator("#status")).to_have_text("done")
        page.goto(app_address)
        expect(page.locator(f'#cases tr[data-case="{case_id}"]')).to_contain_text("done")
        browser.close()
    assert not errors, errors

    review = json.loads((shipped_run / layout.review_path(case_id, "alice")).read_text())
    assert {k: v["decision"] for k, v in review["detections"].items()} == {"1": "accept", "2": "reject"}
    added, counted = review["added"]
    assert "set_aside" not in added and counted["set_aside"] == "edge rule"
    assert review["done"] and review["mask_sha256"] == decisions.mask_sha256(shipped_run, record)
    values = decisions.reviewed_values(shipped_run, record)
    assert (values["review_status"], values["reviewed_by"], values["reviewed_accepted"], values["reviewed_rejected"],
            values["reviewed_added"], values["reviewed_undecided"], values["reviewed_count"]) == \
        ("done", "alice", 1, 1, 2, len(table) - 2, 3)
    # the added microbleeds placed by the run's atlas placement: the categories count them
    assert {added["region_category"], counted["region_category"]} <= {"lobar", "deep", "infratentorial"}
    assert sum(values[f"reviewed_count_{c}"] for c in ("lobar", "deep", "infratentorial")) == 3
    # the merged summary shows the reviewed counts beside the tool's
    from mixmicrobleednet.cli import main

    assert main(["merge", str(shipped_run)]) == 0
    (row,) = pd.read_csv(shipped_run / layout.SUMMARY_CSV).to_dict("records")
    assert (row["microbleed_count"], row["review_status"], row["reviewed_by"], row["reviewed_count"]) == \
        (len(table), "done", "alice", 3)

    # the reviewed mask: lesion 1's component and a ball around each added microbleed, nothing else
    mask_image = sitk.ReadImage(str(shipped_run / record["outputs"]["mask"]))
    labels, _ = ndimage.label(sitk.GetArrayFromImage(mask_image) > 0, np.ones((3, 3, 3), bool))
    first = labels == labels[tuple(np.round(table.loc[0, ["centroid_k", "centroid_j", "centroid_i"]]).astype(int))]
    reviewed = sitk.GetArrayFromImage(sitk.ReadImage(str(shipped_run / layout.reviewed_mask_path(case_id, "alice"))))
    ball = reviewed.astype(bool) & ~first
    assert (reviewed[first] == 1).all()
    points = np.array([mask_image.TransformPhysicalPointToContinuousIndex([-a["x_ras_mm"], -a["y_ras_mm"], a["z_ras_mm"]])
                       for a in (added, counted)])[:, ::-1]
    zyx = np.argwhere(ball)
    spacing = np.array(mask_image.GetSpacing()[::-1])
    distances = np.linalg.norm((zyx[:, None] - points[None]) * spacing, axis=2)
    assert 2 <= len(zyx) <= 24 and (distances.min(axis=1) <= 1.5 + 1.7).all() and (distances.min(axis=0) <= 1.7).all()

    # the export of the reviewed case
    assert main(["review", str(shipped_run), "-i", str(REPO / "test" / "input"), "--export"]) == 0
    assert "data:image/png;base64," in (shipped_run / layout.review_report_path(case_id)).read_text()


@pytest.mark.model
def test_finished_reviews_become_training_cases_and_train_on_them(tmp_path, caplog):
    """`train --from-reviews`: a case whose finished review decided every detection gives its inputs
    and its reviewed mask as the label; unsure, undecided or unfinished cases are left out."""
    from mixmicrobleednet.cli import main
    from mixmicrobleednet.train import reviewed_training_data

    used, unsure, unfinished = (write_output(tmp_path, case_id=layout.case_stem(s)) for s in ("t1", "t2", "t3"))
    for lesion_id, decision in ((1, "accept"), (2, "reject"), (3, "accept")):
        decisions.record_decision(tmp_path, used, "alice", lesion_id, decision)
        decisions.record_decision(tmp_path, unsure, "alice", lesion_id, "unsure" if lesion_id == 2 else decision)
    decisions.add_microbleed(tmp_path, used, "alice", (0.0, 0.0, 0.0))
    decisions.set_done(tmp_path, used, "alice", True)
    decisions.set_done(tmp_path, unsure, "alice", True)
    decisions.record_decision(tmp_path, unfinished, "bob", 1, "accept")
    data = tmp_path / "data"
    with caplog.at_level("INFO"):
        assert reviewed_training_data(tmp_path, tmp_path / "input", data) == [used["case_id"]]
    assert "review leaves 1 detection(s) unsure or undecided" in caplog.text and "(review in progress)" in caplog.text
    t2s = data / layout.input_name(used["case_id"], layout.REFERENCE_CHANNEL)
    assert t2s.resolve() == (tmp_path / "input" / used["inputs"][0]["file"]).resolve()
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(data / layout.label_name(used["case_id"]))))
    assert label[COMPONENTS[0]].all() and label[COMPONENTS[2]].all() and not label[COMPONENTS[1]].any()
    assert label.sum() > sum(np.ones((10, 20, 20))[box].sum() for box in (COMPONENTS[0], COMPONENTS[2]))  # + the ball

    # fine-tuning the random model on it, one short epoch
    assert main(["train", "--from-reviews", str(tmp_path), "-i", str(tmp_path / "input"), "--out",
                 str(tmp_path / "tuned"), "--channels", "T2S", "--epochs", "1", "--iterations-per-epoch", "1",
                 "--device", "cpu"]) == 0
    assert (tmp_path / "tuned" / layout.CHECKPOINT).is_file()
    assert main(["train", "--from-reviews", str(tmp_path / "input"), "--out", str(tmp_path / "none")]) == 2
