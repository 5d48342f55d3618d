"""DICOM in: series found in any folder structure, identified by the rule table, converted by dcm2niix
into a BIDS dataset (`dicom2bids`), and `predict -i DICOM_FOLDER` through to the outputs for PACS.
The series are synthesised from phantoms with pydicom (tests/dicom_series.py)."""

from __future__ import annotations

import gzip
import json
import logging
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from mixmicrobleednet import cli, layout
from mixmicrobleednet.dicom import read_headers
from mixmicrobleednet.pipeline import FunctionPredictor
from mixmicrobleednet.report import OutputSettings
from mixmicrobleednet.runner import DICOM, prepare_run
from mixmicrobleednet.train import write_random_model

from conftest import brain_volume, make_image, run_options
from dicom_series import Patient, Study, oblique, stored_values, write_series
from test_bids import validator_errors

PATIENT = Patient(name="Doe^Jane", patient_id="P-0001", birth_date="19480229")
SUBJECT = "P0001"  # the PatientID as a BIDS label


@pytest.fixture
def export(tmp_path):
    """A PACS export: one flat folder with a first visit's series (T2*-GRE, SWI phase, minimum-intensity
    projection, localiser, T1, T2, a sequence no rule knows) and a damaged file; the second visit's
    T2*-GRE a year later, nested folders deep."""
    root = tmp_path / "export"
    t2s = oblique(make_image(brain_volume((20, 40, 36)) * 10))
    t1 = oblique(make_image(brain_volume((20, 40, 36), seed=5) * 10))
    first, second = Study.new("20260105"), Study.new("20270110")
    for number, kind in enumerate(("localizer", "t2star", "phase", "minip", "t1", "t2", "unknown"), start=1):
        write_series(t1 if kind == "t1" else t2s, root / "flat", kind, patient=PATIENT, study=first, series_number=number)
    write_series(t2s, root / "2027" / "study" / "series4", "t2star", patient=PATIENT, study=second, series_number=4)
    (root / "flat" / "IM999_0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00damaged")
    (root / "flat" / "notes.txt").write_text("not DICOM, not looked at")
    return root, {"T2S": t2s, "T1": t1}


def _series_table(bids_dir) -> pd.DataFrame:
    return pd.read_csv(bids_dir / layout.DICOM_SERIES_TSV, sep="\t", dtype=str, keep_default_na=False)


def test_series_in_any_folder_structure_are_identified_and_converted_into_bids(export, tmp_path, caplog):
    root, truth = export
    bids_dir = tmp_path / "bids"
    with caplog.at_level(logging.INFO):
        assert cli.main(["dicom2bids", str(root), str(bids_dir)]) == 1  # the damaged file; the rest converted
    table = _series_table(bids_dir)
    found = {(row.session, row.series_description): (row.use, row.status, row.bids_image) for row in table.itertuples()
             if row.series_description}
    first, second = f"sub-{SUBJECT}/ses-20260105/anat/sub-{SUBJECT}_ses-20260105", \
        f"sub-{SUBJECT}/ses-20270110/anat/sub-{SUBJECT}_ses-20270110"
    assert found == {
        ("20260105", "AAHead_Scout"): ("ignore", "ignored", ""),
        ("20260105", "t2star_gre_axial"): ("T2S", "converted", f"{first}_T2starw.nii.gz"),
        ("20260105", "SWI_Pha_Images"): ("ignore", "ignored", ""),
        ("20260105", "mIP_Images(SW)"): ("ignore", "ignored", ""),
        ("20260105", "t1_mprage_sag"): ("T1", "converted", f"{first}_T1w.nii.gz"),
        ("20260105", "t2_tse_tra"): ("T2", "converted", f"{first}_T2w.nii.gz"),
        ("20260105", "research_seq_42"): ("", "unidentified", ""),
        ("20270110", "t2star_gre_axial"): ("T2S", "converted", f"{second}_T2starw.nii.gz")}
    damaged = table[table["series_description"] == ""]
    assert list(damaged["status"]) == ["error"] and "IM999_0001.dcm: not readable as DICOM" in damaged["message"].iloc[0]
    assert "IM999_0001.dcm: not readable as DICOM" in caplog.text
    assert "series 7 'research_seq_42' (20 files in" in caplog.text and "--dicom-rules" in caplog.text

    # The images are the phantom's voxels on the phantom's grid (dcm2niix flips axes: resampled, not interpolated).
    for channel, image_name in (("T2S", f"{first}_T2starw.nii.gz"), ("T1", f"{first}_T1w.nii.gz"),
                                ("T2S", f"{second}_T2starw.nii.gz")):
        converted = sitk.ReadImage(str(bids_dir / image_name))
        np.testing.assert_allclose(converted.GetSpacing(), truth[channel].GetSpacing(), atol=1e-5)
        on_truth = sitk.Resample(converted, truth[channel], sitk.Transform(), sitk.sitkNearestNeighbor)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(on_truth), stored_values(truth[channel]))
    sidecar = json.loads((bids_dir / f"{second}_T2starw.json").read_text())
    assert sidecar["AcquisitionDateTime"].startswith("2027-01-10") and sidecar["EchoTime"] == pytest.approx(0.02)
    assert not {"PatientName", "PatientID", "PatientBirthDate"} & set(sidecar)
    headers = read_headers(bids_dir / layout.dicom_headers_path(f"sub-{SUBJECT}_ses-20270110_T2starw.nii.gz"))
    sources = sorted((root / "2027").rglob("*.dcm"))
    assert sorted(h.SOPInstanceUID for h in headers) == sorted(pydicom.dcmread(p).SOPInstanceUID for p in sources)
    assert "PixelData" not in headers[0] and headers[0].PatientID == PATIENT.patient_id
    assert validator_errors(bids_dir) == []

    # Again: nothing converted twice, nothing lost.
    before = (bids_dir / f"{first}_T2starw.nii.gz").stat().st_mtime_ns
    assert cli.main(["dicom2bids", str(root), str(bids_dir)]) == 1
    assert set(_series_table(bids_dir)["status"]) == {"ignored", "converted before", "unidentified", "error"}
    assert (bids_dir / f"{first}_T2starw.nii.gz").stat().st_mtime_ns == before


def test_a_site_rule_table_is_read_before_the_built_in_one(export, tmp_path, caplog):
    root, _ = export
    (root / "flat" / "IM999_0001.dcm").unlink()
    rules = tmp_path / "site_rules.toml"
    rules.write_text('[[rule]]\nname = "research-t2star"\nuse = "T2S"\nwhy = "our research GRE"\n'
                     'acquisition = "research"\ndescription = "^research_seq"\n')
    assert cli.main(["dicom2bids", str(root), str(tmp_path / "bids"), "--dicom-rules", str(rules)]) == 0
    row = _series_table(tmp_path / "bids").set_index("series_description").loc["research_seq_42"]
    assert (row["rule"], row["status"]) == ("research-t2star", "converted")
    assert row["bids_image"].endswith(f"sub-{SUBJECT}_ses-20260105_acq-research_T2starw.nii.gz")

    rules.write_text('[[rule]]\nname = "flair-please"\nuse = "FLAIR"\nwhy = "?"\n')
    assert cli.main(["dicom2bids", str(root), str(tmp_path / "other"), "--dicom-rules", str(rules)]) == 2
    assert "rule 'flair-please': use must be one of T1, T2, T2S or ignore" in caplog.text


def test_a_series_dcm2niix_cannot_stack_is_named_and_the_others_convert(tmp_path, caplog):
    """Slices of two sizes in one series: dcm2niix makes two images; no image of it is kept."""
    root, study = tmp_path / "export", Study.new()
    write_series(make_image(brain_volume()), root, "t2star", study=study, series_number=1)
    odd = write_series(make_image(brain_volume((6, 30, 36))), tmp_path / "odd", "t2star", study=study, series_number=2)
    uid = pydicom.dcmread(root / "IM001_0001.dcm").SeriesInstanceUID
    for path in odd:
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID, dataset.SeriesNumber = uid, 1
        dataset.save_as(root / f"odd_{path.name}")
    write_series(make_image(brain_volume()), root, "t1", study=study, series_number=3)
    assert cli.main(["dicom2bids", str(root), str(tmp_path / "bids")]) == 1
    rows = _series_table(tmp_path / "bids").set_index("series_number")
    assert rows.loc["1", "status"] == "error" and rows.loc["1", "bids_image"] == ""
    assert "series 1 't2star_gre_axial' (26 files in" in rows.loc["1", "message"] and "dcm2niix made 2 images" in caplog.text
    assert rows.loc["3", "status"] == "converted"
    assert not list((tmp_path / "bids").rglob("*T2starw*")) and not list((tmp_path / "bids").glob(".dcm2niix-*"))


def _dark_dots(stack, model):
    """Probabilities from the T2* scan itself: its dark dot (brain_volume's) is the microbleed."""
    t2s = stack.array[model.channels.index(layout.REFERENCE_CHANNEL)]
    return np.where((t2s > 0) & (t2s < 300), 0.9, 0.0).astype(np.float32)


@pytest.mark.model
def test_predict_on_a_dicom_folder_writes_bids_derivatives_and_outputs_for_pacs(export, tmp_path):
    import highdicom as hd

    root, _ = export
    out = tmp_path / "out"
    t2s_model = write_random_model(tmp_path / "model", channels=(layout.REFERENCE_CHANNEL,))
    run = prepare_run(root, out, run_options(t2s_model, output=OutputSettings(regions=False)))
    assert run.input_layout == DICOM and len(run.cases) == 2
    results = run.execute(FunctionPredictor(_dark_dots))
    assert [r.error_messages for r in results] == [[], []] and [r.microbleed_count for r in results] == [1, 1]
    converted = out / layout.DICOM_CONVERTED_DIR
    assert json.loads((out / layout.DATASET_DESCRIPTION).read_text())["SourceDatasets"] == [{"URL": converted.resolve().as_uri()}]
    result = results[1]  # the second visit
    mask = sitk.ReadImage(str(out / result.outputs["mask"]))
    seg = hd.seg.segread(out / result.outputs["dicom_seg"])
    headers = read_headers(converted / layout.dicom_headers_path(f"sub-{SUBJECT}_ses-20270110_T2starw.nii.gz"))
    assert seg.PatientID == PATIENT.patient_id and seg.PatientBirthDate == PATIENT.birth_date
    assert {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence} == {headers[0].SeriesInstanceUID}
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[h.SOPInstanceUID for h in headers],
                                               segment_numbers=[1], ignore_spatial_locations=True)
    assert int(frames.sum()) == int(sitk.GetArrayFromImage(mask).sum()) > 0
    report = pydicom.dcmread(out / result.outputs["dicom_sr"])
    assert report.PatientName == PATIENT.name and report.Modality == "SR"
    assert pydicom.dcmread(out / result.outputs["dicom_qc"]).Modality in ("OT", "MR")
    assert validator_errors(out) == []

    # De-identified outputs: the subject label in place of the patient's name, ID and birth date.
    shutil.rmtree(out / layout.DICOM_OUTPUTS_DIR)
    run = prepare_run(root, out, run_options(t2s_model, output=OutputSettings(regions=False, deidentify=True)))
    result = run.execute(FunctionPredictor(_dark_dots))[1]
    for kind in ("dicom_seg", "dicom_sr", "dicom_qc"):
        written = (out / result.outputs[kind]).read_bytes()
        assert PATIENT.patient_id.encode() not in written and b"Doe^Jane" not in written
        assert pydicom.dcmread(out / result.outputs[kind]).PatientID == f"sub-{SUBJECT}"
    with gzip.open(converted / layout.dicom_headers_path(f"sub-{SUBJECT}_ses-20270110_T2starw.nii.gz"), "rt") as handle:
        assert PATIENT.patient_id in handle.read()  # the converted dataset's own copy is the user's source data


def test_an_enhanced_mr_series_is_identified_converted_and_its_header_kept(tmp_path):
    """Enhanced MR (Siemens XA, Philips): a series is one multi-frame file, its echo time and sequence in the
    functional groups and EchoPulseSequence rather than at the top; identified as the same series exported
    single-frame is, converted whole, its header (with the frames' planes) kept for the outputs for PACS."""
    from dicom_series import write_enhanced_series

    root, study = tmp_path / "export", Study.new("20260105")
    t2s = oblique(make_image(brain_volume((20, 40, 36)) * 10))
    sources = {kind: write_enhanced_series(t2s, root / f"IM{number:04d}", kind, patient=PATIENT, study=study,
                                           series_number=number)
               for number, kind in enumerate(("t2star", "swi", "phase"), start=1)}
    bids_dir = tmp_path / "bids"
    assert cli.main(["dicom2bids", str(root), str(bids_dir)]) == 0
    table = _series_table(bids_dir).set_index("series_description")
    name = f"sub-{SUBJECT}/ses-20260105/anat/sub-{SUBJECT}_ses-20260105"
    assert table[["rule", "use", "status", "files", "bids_image"]].to_dict("index") == {
        "t2star_gre_axial": {"rule": "t2star-name", "use": "T2S", "status": "converted", "files": "1",
                             "bids_image": f"{name}_T2starw.nii.gz"},
        "SWI_Images": {"rule": "swi", "use": "T2S", "status": "converted", "files": "1",
                       "bids_image": f"{name}_acq-swi_T2starw.nii.gz"},
        "SWI_Pha_Images": {"rule": "phase", "use": "ignore", "status": "ignored", "files": "1", "bids_image": ""}}

    converted = sitk.ReadImage(str(bids_dir / f"{name}_T2starw.nii.gz"))
    np.testing.assert_allclose(converted.GetSpacing(), t2s.GetSpacing(), atol=1e-5)
    on_truth = sitk.Resample(converted, t2s, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_truth), stored_values(t2s))
    sidecar = json.loads((bids_dir / f"{name}_T2starw.json").read_text())
    assert (sidecar["EchoTime"], sidecar["RepetitionTime"]) == (pytest.approx(0.02), pytest.approx(0.03))
    assert sidecar["AcquisitionDateTime"].startswith("2026-01-05")
    assert not {"PatientName", "PatientID", "PatientBirthDate"} & set(sidecar)
    [header] = read_headers(bids_dir / layout.dicom_headers_path(f"sub-{SUBJECT}_ses-20260105_T2starw.nii.gz"))
    assert header.SOPInstanceUID == pydicom.dcmread(sources["t2star"]).SOPInstanceUID
    assert header.NumberOfFrames == len(header.PerFrameFunctionalGroupsSequence) == t2s.GetSize()[2]
    assert "PixelData" not in header and header.PatientID == PATIENT.patient_id
    assert validator_errors(bids_dir) == []
