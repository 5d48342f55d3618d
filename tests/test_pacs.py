"""pacs.py: the SEG, SR and QC capture made for PACS from a case converted from DICOM (a single-frame
series or one Enhanced MR image), read back with highdicom against the NIfTI mask and the lesion table,
and checked by dciodvfy (dicom3tools)."""

import copy
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

import dicom_series
from conftest import brain_volume, make_image
from mixmicrobleednet import __version__
from mixmicrobleednet.lesions import extract_lesions
from mixmicrobleednet.pacs import MARS_CATEGORY, PacsError, write_dicom_outputs

PATIENT = dicom_series.Patient(name="Quill^Imogen", patient_id="MRN-4471-88", birth_date="19471203", sex="F")
GRID = dicom_series.oblique(make_image(brain_volume((20, 40, 36)), spacing_xyz=(0.7, 0.9, 1.2)))  # rows ≠ columns
#: Three microbleeds on the NIfTI grid (i, j, k), with their MARS region, category and hemisphere.
BLEEDS = [((12, 14, 8), "frontal", "lobar", "left"), ((24, 26, 11), "basal ganglia", "deep", "right"),
          ((18, 20, 4), "deep white matter", "deep", "midline")]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """An oblique MR series, its headers as the pipeline keeps them (DICOM JSON, no pixels), the image
    dcm2niix converts it to, and the series' own grid."""
    work = tmp_path_factory.mktemp("pacs")
    files = dicom_series.write_series(GRID, work / "series", "t2star", patient=PATIENT, study=dicom_series.Study.new())
    # reversed: the headers come in no particular order
    return converted(files, work)[::-1], sitk.ReadImage(str(work / "t2s.nii.gz")), GRID


@pytest.fixture(scope="module")
def enhanced_case(tmp_path_factory):
    """The same as one Enhanced MR image (a frame per slice, its planes in the functional groups), as
    Siemens XA and Philips scanners export: its header, the image dcm2niix converts it to, the grid."""
    work = tmp_path_factory.mktemp("pacs_enhanced")
    path = dicom_series.write_enhanced_series(GRID, work / "series" / "IM0001.dcm", "t2star", patient=PATIENT,
                                              study=dicom_series.Study.new())
    return converted([path], work), sitk.ReadImage(str(work / "t2s.nii.gz")), GRID


def converted(files: list[Path], work: Path) -> list[pydicom.Dataset]:
    """The files converted by dcm2niix into work/t2s.nii.gz; their headers as the pipeline keeps them."""
    from dcm2niix import bin as dcm2niix

    subprocess.run([dcm2niix, "-b", "n", "-z", "y", "-f", "t2s", "-o", str(work), str(files[0].parent)],
                   check=True, capture_output=True)
    return [pydicom.Dataset.from_json(ds.to_json_dict()) for ds in dicom_series.headers(files)]


def microbleeds(nifti: sitk.Image, bleeds=BLEEDS) -> tuple[sitk.Image, pd.DataFrame]:
    """A mask of small blobs on the NIfTI grid and its lesion table as written (with regions)."""
    probabilities = np.zeros(sitk.GetArrayViewFromImage(nifti).shape, np.float32)
    for (i, j, k), *_ in bleeds:
        probabilities[k, j - 1:j + 2, i - 1:i + 1] = 0.7
        probabilities[k, j, i] = 0.95
    lesions = extract_lesions(probabilities, nifti)
    mask = sitk.GetImageFromArray(lesions.mask)
    mask.CopyInformation(nifti)
    table = lesions.with_world()
    by_slice = {k: words for (_, _, k), *words in bleeds}  # the blobs lie on different slices
    places = [by_slice[round(k)] for k in table.centroid_k]
    for n, column in enumerate(("region", "region_category", "hemisphere")):
        table[column] = [place[n] for place in places]
    table[["mni_x_mm", "mni_y_mm", "mni_z_mm"]] = 0.0
    return mask, table


def qc_png(path: Path) -> np.ndarray:
    rgba = np.random.default_rng(1).integers(0, 256, (60, 80, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba[..., :3]


def outputs(folder: Path, with_qc: bool = True) -> dict[str, Path]:
    kinds = ["dicom_seg", "dicom_sr", *(["dicom_qc"] if with_qc else [])]
    return {kind: folder / f"case_{kind}.dcm" for kind in kinds}


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's errors about a file (its warnings, about the private 99MMBN scheme, pass)."""
    tool = shutil.which("dciodvfy")
    assert tool, "dciodvfy (dicom3tools) is missing: run apt-get install dicom3tools"
    run = subprocess.run([tool, str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def expected_frames(mask: sitk.Image, grid: sitk.Image, headers: list[pydicom.Dataset]) -> np.ndarray:
    """The mask on the series' own grid (ITK's nearest-neighbour resampling), a frame per source frame: per
    single-frame header its slice (InstanceNumber), per frame of a multi-frame one its InStackPositionNumber."""
    on_series = sitk.GetArrayFromImage(sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor))
    frames = headers[0].get("PerFrameFunctionalGroupsSequence")
    slices = [groups.FrameContentSequence[0].InStackPositionNumber for groups in frames] if frames else \
        [ds.InstanceNumber for ds in headers]
    return np.stack([on_series[n - 1] for n in slices])


def per_frame_planes(header: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of a multi-frame header with orientation and pixel spacing in each frame's functional groups
    rather than the shared ones, as Philips writes them."""
    header = copy.deepcopy(header)
    shared = header.SharedFunctionalGroupsSequence[0]
    for sequence in ("PlaneOrientationSequence", "PixelMeasuresSequence"):
        for frame in header.PerFrameFunctionalGroupsSequence:
            setattr(frame, sequence, copy.deepcopy(shared[sequence].value))
        del shared[sequence]
    return header


def seg_frames(path: Path, headers: list[pydicom.Dataset]) -> np.ndarray:
    seg = hd.seg.segread(path)
    return seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in headers], segment_numbers=[1],
                                             assert_missing_frames_are_empty=True)[..., 0]


def check_report(path: Path, table: pd.DataFrame, nifti: sitk.Image, headers: list[pydicom.Dataset]) -> None:
    """The SR holds the table's microbleeds, at their centroids in the source's frame of reference, and cites
    the source."""
    sr = hd.sr.srread(path)
    groups = {group.tracking_identifier: group for group in sr.content.get_volumetric_roi_measurement_groups()}
    assert set(groups) == {f"microbleed {n}" for n in table.lesion_id}
    for row in table.itertuples():
        group = groups[f"microbleed {row.lesion_id}"]
        assert group.finding_type.value == "CMB"
        lps = nifti.TransformContinuousIndexToPhysicalPoint((row.centroid_i, row.centroid_j, row.centroid_k))
        np.testing.assert_allclose(group.roi.graphic_data.ravel(), lps, atol=1e-3)
        assert group.roi.frame_of_reference_uid == headers[0].FrameOfReferenceUID
        for column, meaning, unit in (("volume_mm3", "Volume", "mm3"),
                                      ("equivalent_diameter_mm", "Sphere-equivalent diameter", "mm"),
                                      ("max_probability", "Maximum microbleed probability", "1"),
                                      ("mean_probability", "Mean microbleed probability", "1")):
            [measurement] = [m for m in group.get_measurements() if m.name.meaning == meaning]
            assert measurement.value == pytest.approx(getattr(row, column), rel=1e-9)
            assert measurement.unit.value == unit
        # the random model has no mimic check: no calibrated probability to report
        assert np.isnan(row.calibrated_probability)
        assert not [m for m in group.get_measurements() if m.name.meaning == "Calibrated microbleed probability"]
        [site] = group.finding_sites
        assert site.value.meaning == row.region
        modifiers = {item.ConceptCodeSequence[0].CodeMeaning for item in site.ContentSequence}
        assert modifiers == {{"left": "Left", "right": "Right", "midline": "Midline"}[row.hemisphere]}
        [category] = group.get_qualitative_evaluations(MARS_CATEGORY)
        assert category.value.meaning == row.region_category
    [count] = sr.content.get_image_measurement_groups()
    assert count.get_measurements()[0].value == 3
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert len(evidence.ReferencedSOPSequence) == len(headers)


def test_outputs_overlay_the_source_series_and_hold_the_table(case, tmp_path):
    headers, nifti, grid = case
    # dcm2niix's axes are not the series' rows, columns and slices: the mapping must undo that.
    assert not np.allclose(nifti.GetDirection(), grid.GetDirection(), atol=1e-3)
    mask, table = microbleeds(nifti)
    assert len(table) == 3
    paths = outputs(tmp_path)
    assert write_dicom_outputs(paths, mask, table, None, headers) == {k: p for k, p in paths.items() if k != "dicom_qc"}

    frames = seg_frames(paths["dicom_seg"], headers)
    assert frames.sum() == sitk.GetArrayViewFromImage(mask).sum() == table.voxel_count.sum()
    np.testing.assert_array_equal(frames, expected_frames(mask, grid, headers))
    seg = pydicom.dcmread(paths["dicom_seg"])
    assert seg.NumberOfFrames < len(headers)  # the empty ones are omitted, and read back as empty
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == {ds.SOPInstanceUID for ds in headers}
    segment = seg.SegmentSequence[0]
    assert (segment.SegmentLabel, segment.SegmentAlgorithmType) == ("Cerebral microbleed", "AUTOMATIC")
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "99MMBN"
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == __version__

    check_report(paths["dicom_sr"], table, nifti, headers)

    for path in (paths["dicom_seg"], paths["dicom_sr"]):
        written = pydicom.dcmread(path)
        assert (written.PatientName, written.PatientID, written.PatientBirthDate) == \
            (PATIENT.name, PATIENT.patient_id, PATIENT.birth_date)
        assert written.StudyInstanceUID == headers[0].StudyInstanceUID
        assert written.SeriesInstanceUID != headers[0].SeriesInstanceUID
        assert (written.Manufacturer, written.SoftwareVersions) == ("MixMicrobleedNet", __version__)
        assert dciodvfy_errors(path) == []


@pytest.mark.parametrize("planes", ["shared", "per frame", "frames reversed"])
def test_an_enhanced_source_gets_a_seg_of_its_frames_a_report_and_a_capture(enhanced_case, tmp_path, planes):
    """One Enhanced MR image (Siemens XA, Philips): the SEG's frames are its frames, whether orientation and
    pixel spacing are shared (Siemens) or per frame (Philips), whatever their order; the SR cites it, the
    capture is in its study."""
    [header], nifti, grid = enhanced_case
    assert header.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.1" and header.NumberOfFrames == grid.GetSize()[2]
    assert not np.allclose(nifti.GetDirection(), grid.GetDirection(), atol=1e-3)
    if planes == "frames reversed":  # the frames of the image in the other order: the SEG follows their positions
        header = copy.deepcopy(header)
        header.PerFrameFunctionalGroupsSequence = list(header.PerFrameFunctionalGroupsSequence)[::-1]
    source = per_frame_planes(header) if planes == "per frame" else header
    mask, table = microbleeds(nifti)
    assert len(table) == 3
    qc_png(tmp_path / "qc.png")
    paths = outputs(tmp_path)
    assert write_dicom_outputs(paths, mask, table, tmp_path / "qc.png", [source]) == paths

    seg = hd.seg.segread(paths["dicom_seg"])
    frames = seg.get_pixels_by_source_frame(header.SOPInstanceUID, list(range(1, header.NumberOfFrames + 1)),
                                            segment_numbers=[1], assert_missing_frames_are_empty=True)[..., 0]
    assert frames.sum() == sitk.GetArrayViewFromImage(mask).sum() == table.voxel_count.sum()
    np.testing.assert_array_equal(frames, expected_frames(mask, grid, [header]))
    assert seg.NumberOfFrames < header.NumberOfFrames  # the empty ones are omitted, and read back as empty
    [referenced] = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert (seg.ReferencedSeriesSequence[0].SeriesInstanceUID, referenced.ReferencedSOPInstanceUID) == \
        (header.SeriesInstanceUID, header.SOPInstanceUID)
    assert seg.FrameOfReferenceUID == header.FrameOfReferenceUID
    assert planes != "per frame" or "PlaneOrientationSequence" in source.PerFrameFunctionalGroupsSequence[0]  # as given

    check_report(paths["dicom_sr"], table, nifti, [header])
    capture = pydicom.dcmread(paths["dicom_qc"])
    assert (capture.PatientID, capture.StudyInstanceUID) == (PATIENT.patient_id, header.StudyInstanceUID)
    for path in paths.values():
        assert dciodvfy_errors(path) == []


def _two_images(header):
    return [header, copy.deepcopy(header)]


def _frame_3_unplaced(header):
    del header.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    return [header]


def _frames_miscounted(header):
    header.NumberOfFrames += 1
    return [header]


def _frame_2_turned(header):  # by a millionth: still on the NIfTI grid, but not one orientation
    header = per_frame_planes(header)
    orientation = header.PerFrameFunctionalGroupsSequence[1].PlaneOrientationSequence[0]
    orientation.ImageOrientationPatient = [round(v + 1e-6, 8) for v in orientation.ImageOrientationPatient]
    return [header]


@pytest.mark.parametrize("damage, problem", [
    (_two_images, "2 source images, multi-frame ones among them"),
    (_frame_3_unplaced, "frame 3 lacks ImagePositionPatient"),
    (_frames_miscounted, "20 per-frame functional groups for NumberOfFrames 21"),
    (_frame_2_turned, "its frames differ in PlaneOrientationSequence")])
def test_enhanced_sources_without_one_grid_are_refused(enhanced_case, tmp_path, damage, problem):
    """A multi-frame source whose frames are not one grid that highdicom can write a SEG of: named, nothing written."""
    [header], nifti, _ = enhanced_case
    mask, table = microbleeds(nifti)
    with pytest.raises(PacsError, match=problem):
        write_dicom_outputs(outputs(tmp_path, with_qc=False), mask, table, None, damage(copy.deepcopy(header)))
    assert not any(tmp_path.iterdir())


def test_qc_picture_is_a_secondary_capture_in_the_patients_study(case, tmp_path):
    headers, nifti, _ = case
    mask, table = microbleeds(nifti)
    pixels = qc_png(tmp_path / "qc.png")
    paths = {"dicom_qc": tmp_path / "qc.dcm"}
    assert write_dicom_outputs(paths, mask, table, tmp_path / "qc.png", headers) == paths
    capture = pydicom.dcmread(paths["dicom_qc"])
    np.testing.assert_array_equal(capture.pixel_array, pixels)
    assert (capture.PatientID, capture.StudyInstanceUID) == (PATIENT.patient_id, headers[0].StudyInstanceUID)
    assert capture.SeriesInstanceUID != headers[0].SeriesInstanceUID
    assert dciodvfy_errors(paths["dicom_qc"]) == []


def test_deidentified_outputs_carry_only_the_subject_label(case, tmp_path):
    headers, nifti, _ = case
    mask, table = microbleeds(nifti)
    qc_png(tmp_path / "qc.png")
    site = {"InstitutionName": "St Elsewhere Hospital", "StationName": "ELSEWHERE-MR3", "OperatorsName": "Tech^Tom",
            "DeviceSerialNumber": "SN-0042-XY", "PatientAge": "078Y"}
    from_site = [copy.deepcopy(ds) for ds in headers]
    for ds in from_site:
        for keyword, value in site.items():
            setattr(ds, keyword, value)
    paths = write_dicom_outputs(outputs(tmp_path), mask, table, tmp_path / "qc.png", from_site, deidentify_as="sub-01")
    assert set(paths) == {"dicom_seg", "dicom_sr", "dicom_qc"}
    for path in paths.values():
        content = path.read_bytes()
        for value in (PATIENT.name, PATIENT.patient_id, PATIENT.birth_date, headers[0].AccessionNumber, *site.values()):
            assert value.encode() not in content, (path.name, value)
        written = pydicom.dcmread(path)
        assert (written.PatientName.family_name, written.PatientID) == ("sub-01", "sub-01")
        assert written.PatientIdentityRemoved == "YES"
        assert not written.PatientBirthDate and not written.PatientSex and not written.AccessionNumber
        assert written.DeidentificationMethod
        # the outputs still belong to the source study, so the SEG still overlays the series
        assert written.StudyInstanceUID == headers[0].StudyInstanceUID
        assert dciodvfy_errors(path) == []
    assert (from_site[0].PatientName, from_site[0].AccessionNumber) == (PATIENT.name, "ACC20260105")  # untouched


@pytest.mark.parametrize("shift, problem", [(0.5, "voxel off the NIfTI grid"), (1.0, "outside the NIfTI grid")])
def test_headers_of_another_grid_are_refused(case, tmp_path, shift, problem):
    headers, nifti, _ = case
    mask, table = microbleeds(nifti)
    moved = []
    for ds in headers:  # the series moved by `shift` columns along its rows
        ds = copy.deepcopy(ds)
        ds.ImagePositionPatient = list(np.add(ds.ImagePositionPatient, np.multiply(
            ds.ImageOrientationPatient[:3], shift * ds.PixelSpacing[1])))
        moved.append(ds)
    with pytest.raises(PacsError, match=problem):
        write_dicom_outputs(outputs(tmp_path), mask, table, None, moved)
    assert not any(tmp_path.iterdir())


def test_no_microbleeds_make_a_valid_seg_and_report(case, tmp_path):
    headers, nifti, _ = case
    mask, table = microbleeds(nifti, bleeds=[])
    assert table.empty
    paths = write_dicom_outputs(outputs(tmp_path, with_qc=False), mask, table, None, headers)
    assert not seg_frames(paths["dicom_seg"], headers).any()
    sr = hd.sr.srread(paths["dicom_sr"])
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    [count] = sr.content.get_image_measurement_groups()
    assert count.get_measurements()[0].value == 0
    for path in paths.values():
        assert dciodvfy_errors(path) == []
