"""The BIDS App: cases of a BIDS dataset, the derivatives dataset, the group level, the validator."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.bids import NO_RECORD, bids_cases
from mixmicrobleednet.cli import main as cli_main
from mixmicrobleednet.report import OutputSettings

from conftest import BIDS_VISITS, predict, write_bids_dataset, write_case

VALIDATOR = Path(sys.executable).with_name("bids-validator-deno")


def validator_errors(dataset: Path) -> list[str]:
    """bids-validator-deno's errors on a dataset (warnings are allowed)."""
    run = subprocess.run([str(VALIDATOR), str(dataset), "--format", "json"], capture_output=True, text=True)
    assert run.stdout, run.stderr[-2000:]
    issues = json.loads(run.stdout)["issues"]["issues"]
    return [f"{i['code']} {i.get('location')} {i.get('subCode') or ''}" for i in issues if i["severity"] == "error"]


def test_cases_of_a_bids_dataset(tmp_path):
    root = write_bids_dataset(tmp_path / "raw", shape=(4, 6, 5))
    cases = bids_cases(root, layout.CHANNELS)
    assert [c.case_id for c in cases] == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03"]
    second = cases[1]
    assert (second.subject, second.session, second.input_problem) == ("02", "1", None)
    assert second.channel_paths["T2S"] == root / "sub-02/ses-1/anat/sub-02_ses-1_T2starw.nii.gz"
    assert second.output_paths["mask"] == "sub-02/ses-1/anat/sub-02_ses-1_space-T2starw_label-CMB_mask.nii.gz"
    assert second.sources["T1"] == "bids:raw:sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"
    # only the chosen participants are indexed
    assert [c.case_id for c in bids_cases(root, layout.CHANNELS, ("sub-03",))] == ["sub-03"]
    # a model that needs only the T2* does not ask for T1w or T2w
    (root / "sub-03/anat/sub-03_T1w.nii.gz").unlink()
    assert bids_cases(root, ("T2S",), ("03",))[0].input_problem is None


def test_missing_image_names_the_file(tmp_path):
    """Without its T2starw a visit is a case with that problem; without a T1w or T2w it is a case
    whose model, chosen later from what it has, decides whether that is a problem."""
    root = write_bids_dataset(tmp_path / "raw", visits=(("01", None), ("02", None)), shape=(4, 6, 5))
    (root / "sub-01/anat/sub-01_T2w.nii.gz").unlink()
    (root / "sub-02/anat/sub-02_T2starw.nii.gz").unlink()
    cases = {c.case_id: c for c in bids_cases(root, layout.CHANNELS)}
    assert cases["sub-01"].input_problem is None and cases["sub-01"].given_channels() == {"T1", "T2S"}
    assert cases["sub-01"].channel_paths["T2"] == root / "sub-01/anat/sub-01_T2w.nii.gz"
    assert cases["sub-02"].input_problem == "no T2starw image (sub-02/anat/sub-02_T2starw.nii.gz)"


def test_runs_are_cases_and_the_run_rule_is_logged(tmp_path, caplog):
    root = write_bids_dataset(tmp_path / "raw", visits=(("01", None),), shape=(4, 6, 5))
    anat = root / "sub-01/anat"
    for name in ("sub-01_T2starw", "sub-01_T1w"):
        for run in ("1", "2"):
            shutil.copy(anat / f"{name}.nii.gz", anat / f"{name.replace('sub-01_', f'sub-01_run-{run}_')}.nii.gz")
        (anat / f"{name}.nii.gz").unlink()
    shutil.copy(anat / "sub-01_run-1_T1w.nii.gz", anat / "sub-01_acq-mprage_run-3_T1w.nii.gz")
    with caplog.at_level("INFO"):
        cases = bids_cases(root, layout.CHANNELS)
    assert [c.case_id for c in cases] == ["sub-01_run-1", "sub-01_run-2"]
    assert [c.channel_paths["T1"].name for c in cases] == ["sub-01_run-1_T1w.nii.gz", "sub-01_run-2_T1w.nii.gz"]
    assert cases[0].output_paths["mask"].endswith("sub-01_run-1_space-T2starw_label-CMB_mask.nii.gz")
    assert "sub-01_run-1: 3 T1w images; took sub-01_run-1_T1w.nii.gz (the T2starw image's run)" in caplog.text
    # without a run of its own, the T2starw image gets the highest run
    (anat / "sub-01_run-2_T2starw.nii.gz").rename(anat / "sub-01_T2starw.nii.gz")
    (anat / "sub-01_run-1_T2starw.nii.gz").unlink()
    assert bids_cases(root, layout.CHANNELS)[0].channel_paths["T1"].name == "sub-01_acq-mprage_run-3_T1w.nii.gz"


def test_not_a_bids_dataset_is_a_clear_error(tmp_path, random_model, caplog):
    (tmp_path / "plain").mkdir()
    code = cli_main(["bids", str(tmp_path / "plain"), str(tmp_path / "out"), "participant", "--model", str(random_model)])
    assert code == 2 and "not a BIDS dataset (no dataset_description.json)" in caplog.text


def test_participant_and_group_levels_write_a_valid_derivatives_dataset(tmp_path, random_model):
    raw = write_bids_dataset(tmp_path / "raw")
    (raw / "sub-03/anat/sub-03_T1w.nii.gz").unlink()  # one case fails; the others finish
    (raw / "sub-03/anat/sub-03_T1w.json").unlink()
    assert validator_errors(raw) == []
    out = tmp_path / "derivatives"
    base = [str(raw), str(out)]
    options = ["--model", str(random_model), "--device", "cpu", "--fast", "--save-probabilities"]
    assert cli_main(["bids", *base, "participant", "--participant-label", "01", "02", *options]) == 0
    assert cli_main(["bids", *base, "participant", "--participant-label", "sub-03", *options]) == 1
    assert not (out / layout.BIDS_COHORT_TSV).exists()  # the participant level merges nothing
    assert cli_main(["bids", *base, "group", "--model", str(random_model)]) == 1  # sub-03 failed

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "MixMicrobleedNet"
    assert description["SourceDatasets"] == [{"URL": raw.resolve().as_uri()}]
    for subject, session in BIDS_VISITS[:3]:
        case = next(c for c in bids_cases(raw, layout.CHANNELS, (subject,)) if c.session == session)
        mask = sitk.ReadImage(str(out / case.output_paths["mask"]))
        t2s = sitk.ReadImage(str(case.channel_paths["T2S"]))
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert (mask.GetSize(), mask.GetSpacing(), mask.GetOrigin(), mask.GetDirection()) == \
               (t2s.GetSize(), t2s.GetSpacing(), t2s.GetOrigin(), t2s.GetDirection())
        sidecar = json.loads((out / case.output_paths["mask_sidecar"]).read_text())
        assert sidecar["Type"] == "Lesion" and sidecar["Threshold"] == 0.5
        assert sidecar["SpatialReference"] == case.sources["T2S"] and len(sidecar["Sources"]) == 3
        assert (out / case.output_paths["probability"]).is_file()
        table = pd.read_csv(out / case.output_paths["lesions"], sep="\t")
        assert len(table) == int(sitk.GetArrayFromImage(sitk.ConnectedComponent(mask, True)).max())
        assert (out / case.output_paths["qc"]).is_file()
    cohort = pd.read_csv(out / layout.BIDS_COHORT_TSV, sep="\t", keep_default_na=False)
    assert list(cohort["participant_id"]) == ["sub-01", "sub-02", "sub-02", "sub-03"]
    assert list(cohort["session_id"]) == ["n/a", "ses-1", "ses-2", "n/a"]
    assert list(cohort["status"]) == ["ok", "ok", "ok", "error"]
    assert "missing T1 channel: expected file sub-03_T1w.nii.gz, needed by model" in cohort["message"].iloc[3]
    assert validator_errors(out) == []


def test_brain_masks_are_valid_bids_derivatives(tmp_path, random_model):
    """With --brain-mask (a folder of <case>_brainmask.nii.gz) the mask used is written as
    desc-brain_mask with its sidecar, and the derivatives dataset stays valid."""
    raw = write_bids_dataset(tmp_path / "raw", visits=[("01", None)], spacing_xyz=(8.0, 8.0, 12.0))  # a brain's ml
    case = bids_cases(raw, layout.CHANNELS)[0]
    mask = np.zeros((20, 40, 36), np.uint8)
    mask[4:16, 8:32, 8:28] = 1
    given = sitk.GetImageFromArray(mask)
    given.CopyInformation(sitk.ReadImage(str(case.channel_paths["T2S"])))
    (tmp_path / "masks").mkdir()
    sitk.WriteImage(given, str(tmp_path / "masks" / layout.brain_mask_name(case.case_id)))
    out = tmp_path / "derivatives"
    assert cli_main(["bids", str(raw), str(out), "participant", "--model", str(random_model), "--device", "cpu",
                     "--fast", "--brain-mask", str(tmp_path / "masks")]) == 0
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / case.output_paths["brain_mask"])))
    assert np.array_equal(written, mask)
    sidecar = json.loads((out / case.output_paths["brain_mask_sidecar"]).read_text())
    assert sidecar["Type"] == "Brain" and sidecar["Description"].startswith("Brain mask: given")
    assert (out / case.output_paths["preprocessing_qc"]).is_file()
    assert validator_errors(out) == []


def test_group_level_lists_failed_cases_and_cases_that_did_not_run(tmp_path, random_model, caplog):
    """A participant whose scan is unreadable and one whose task died before its record (here: never
    ran) are rows of cohort.tsv with their status and why; the group level then exits 1."""
    raw = write_bids_dataset(tmp_path / "raw", visits=(("01", None), ("02", None), ("03", None)), shape=(8, 10, 9))
    (raw / "sub-02/anat/sub-02_T2starw.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert cli_main(["bids", str(raw), str(out), "participant", "--participant-label", "01", "02", "--model",
                     str(random_model), "--device", "cpu", "--fast", "--no-qc"]) == 1
    assert cli_main(["bids", str(raw), str(out), "group", "--model", str(random_model)]) == 1
    cohort = pd.read_csv(out / layout.BIDS_COHORT_TSV, sep="\t", keep_default_na=False)
    assert list(zip(cohort["case"], cohort["status"])) == [("sub-01", "ok"), ("sub-02", "error"), ("sub-03", "not run")]
    ok, failed, not_run = cohort["message"]
    assert ok == "" and failed.startswith("sub-02_T2starw.nii.gz: not a readable image") and not_run == NO_RECORD
    assert f"{layout.BIDS_COHORT_TSV}: 3 case(s): 1 error, 1 not run, 1 ok" in caplog.text


def test_bids_and_seed_layouts_give_the_same_mask(tmp_path, random_model):
    """The same images as a seed-layout case and as a BIDS case: the same mask, bit for bit."""
    seed = tmp_path / "seed"
    paths = write_case(seed, "01")
    raw = write_bids_dataset(tmp_path / "raw", visits=(("01", None),))
    for channel, path in paths.items():
        shutil.copy(path, raw / "sub-01/anat" / layout.bids_image_name("01", None, channel))
    predict(seed, tmp_path / "seed_out", random_model)
    results = predict(raw, tmp_path / "bids_out", random_model)
    assert predict.exit_code == 0 and results[0].outputs["mask"].startswith("sub-01/anat/")
    seed_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(layout.prediction_path(tmp_path / "seed_out", "sub-01_space-T2S"))))
    bids_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "bids_out" / results[0].outputs["mask"])))
    assert np.array_equal(seed_mask, bids_mask)


def test_resume_skips_finished_bids_cases(tmp_path, random_model, caplog):
    raw = write_bids_dataset(tmp_path / "raw", visits=(("01", None),), shape=(8, 10, 9))
    out = tmp_path / "out"
    arguments = ["bids", str(raw), str(out), "participant", "--model", str(random_model), "--device", "cpu", "--fast",
                 "--resume"]
    assert cli_main(arguments) == 0
    with caplog.at_level("INFO"):
        assert cli_main(arguments) == 0
    assert "sub-01: skipped, finished at" in caplog.text
    # `merge` would write the seed's reports into the derivatives dataset: it points to the group level
    assert cli_main(["merge", str(out)]) == 2 and "group`" in caplog.text
    assert not (out / layout.RESULTS_JSON).exists()

