"""Outputs for PACS when a case's T2* scan came from DICOM: the microbleeds as DICOM objects that a
viewer shows with the source series, in the patient's study.

- a DICOM SEG (binary, one segment "Cerebral microbleed") on the source series' own grid, a frame per
  source slice, so that it overlays the series it was found on: single-frame images (MR Image Storage)
  or one multi-frame image (Enhanced MR, as Siemens XA and Philips export) with its planes in the
  functional groups;
- a Comprehensive 3D SR, a TID 1500 Measurement Report: one measurement group per microbleed (its
  place as a 3D point, volume, equivalent diameter, probabilities, MARS region and hemisphere) and a
  count of microbleeds (0 too, so an empty report says "none" rather than nothing);
- a Secondary Capture of the QC picture, for reading stations that show neither.

The mask is on the NIfTI grid dcm2niix made from the series (same voxels, axes possibly flipped or
permuted): it is looked up at the centre of every source pixel, and a source pixel off that grid
is an error, never a resampling. Concepts no standard code names are in a private coding scheme,
99MMBN, identified in each object; no SNOMED code is invented.
"""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from . import __version__
from .files import atomic_output


class PacsError(Exception):
    """The DICOM outputs cannot be made for this case (the message names the problem); its NIfTI outputs stand."""


NAME = "MixMicrobleedNet"
SCHEME = "99MMBN"
CODING_SCHEME = hd.coding_schemes.CodingSchemeIdentificationItem(SCHEME, name=f"{NAME} private codes",
                                                                 responsible_organization=NAME)
MICROBLEED = hd.sr.CodedConcept("CMB", SCHEME, "Cerebral microbleed")
#: The source grid must hold the NIfTI voxels' centres to this fraction of a voxel.
GRID_TOLERANCE = 0.01
#: High series numbers, away from the scanner's.
SERIES_NUMBERS = {"dicom_seg": 9901, "dicom_sr": 9902, "dicom_qc": 9903}
_ALGORITHM = hd.sr.AlgorithmIdentification(NAME, __version__)
_MEASURED = [  # table column, concept, unit
    ("volume_mm3", codes.SCT.Volume, codes.UCUM.CubicMillimeter),
    ("equivalent_diameter_mm", hd.sr.CodedConcept("EQDIAM", SCHEME, "Sphere-equivalent diameter"),
     codes.UCUM.Millimeter),
    ("max_probability", hd.sr.CodedConcept("MAXPROB", SCHEME, "Maximum microbleed probability"), codes.UCUM.NoUnits),
    ("mean_probability", hd.sr.CodedConcept("MEANPROB", SCHEME, "Mean microbleed probability"), codes.UCUM.NoUnits),
    # the model's mimic check's (lesions.LESION_COLUMNS); left out for a model without one
    ("calibrated_probability", hd.sr.CodedConcept("CALPROB", SCHEME, "Calibrated microbleed probability"),
     codes.UCUM.NoUnits),
]
COUNT = hd.sr.CodedConcept("CMBCOUNT", SCHEME, "Number of cerebral microbleeds")
MARS_CATEGORY = hd.sr.CodedConcept("MARSCAT", SCHEME, "MARS category")
_SIDES = {"left": {"laterality": codes.SCT.Left}, "right": {"laterality": codes.SCT.Right},
          "midline": {"topographical_modifier": codes.SCT.Midline}}
#: Identifying attributes a de-identified output leaves empty (type 2) or drops (type 3).
_EMPTIED = ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName")
_DROPPED = ("PatientAge", "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers",
            "PatientMotherBirthName", "PatientBirthName", "PatientComments", "EthnicGroup", "MilitaryRank",
            "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence",
            "MedicalRecordLocator", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
            "StationName", "OperatorsName", "PerformingPhysicianName", "PhysiciansOfRecord",
            "NameOfPhysiciansReadingStudy", "RequestingPhysician", "DeviceSerialNumber")
DEIDENTIFICATION = [f"{NAME} {__version__}", "patient name and ID set to the subject label",  # LO: 64 characters each
                    "birth date, sex, other patient details emptied or removed",
                    "accession, physicians, institution, station removed", "study and series UIDs and dates kept"]
_GEOMETRY = ("SOPInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "ImagePositionPatient",
             "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
#: Where a multi-frame (enhanced) image holds a frame's ImagePositionPatient, ImageOrientationPatient, PixelSpacing.
_FUNCTIONAL_GROUPS = ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence")


def _private(text: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(text.upper().replace(" ", ""), SCHEME, text)  # SH values: 16 characters at most


def write_dicom_outputs(paths: dict[str, Path], mask: sitk.Image, table: pd.DataFrame, qc_png: Path | None,
                        source: list[pydicom.Dataset], *, deidentify_as: str | None = None) -> dict[str, Path]:
    """The outputs of `paths` (kinds dicom_seg, dicom_sr, dicom_qc; dicom_qc only with `qc_png`) for the
    source series of `source` (its headers, no pixels); kind -> path written."""
    _check_source(source)
    if deidentify_as is not None:
        source = [_deidentified(dataset, deidentify_as) for dataset in source]
    makers = {"dicom_seg": lambda: _segmentation(mask, source),
              "dicom_sr": lambda: _report(table, source),
              "dicom_qc": lambda: _secondary_capture(qc_png, source)}
    written = {}
    for kind, path in paths.items():
        if kind not in makers or (kind == "dicom_qc" and qc_png is None):
            continue
        try:
            dataset = makers[kind]()
        except ValueError as exc:  # highdicom's word for inputs it cannot encode
            raise PacsError(f"{kind}: {exc}") from exc
        if deidentify_as is not None:
            dataset.PatientIdentityRemoved, dataset.DeidentificationMethod = "YES", DEIDENTIFICATION
        with atomic_output(path) as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
        written[kind] = path
    return written


def _check_source(source: list[pydicom.Dataset]) -> None:
    if not source:
        raise PacsError("no source DICOM headers")
    for where, plane in _planes(source):
        missing = [keyword for keyword in _GEOMETRY if plane.get(keyword) in (None, "")]
        if missing:
            raise PacsError(f"{where.replace('slice', 'header', 1)} lacks {', '.join(missing)}")
    if len({dataset.SeriesInstanceUID for dataset in source}) != 1:
        raise PacsError("the source headers are of more than one series")


def _multiframe(source: list[pydicom.Dataset]) -> bool:
    return any("PerFrameFunctionalGroupsSequence" in dataset for dataset in source)


def _planes(source: list[pydicom.Dataset]) -> list[tuple[str, pydicom.Dataset]]:
    """The source frames in the SEG's frame order, each named and with its plane as a single-frame image
    holds it (_GEOMETRY): the single-frame images, or the frames of one multi-frame (enhanced) image, whose
    functional groups hold a frame's plane (its position per frame; orientation, spacing shared or per frame)."""
    if not _multiframe(source):
        return [(f"source slice {dataset.get('SOPInstanceUID', '?')}", dataset) for dataset in source]
    if len(source) > 1:
        raise PacsError(f"{len(source)} source images, multi-frame ones among them: a SEG has one multi-frame source")
    [image] = source
    shared = (image.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()])[0]
    frames = image.PerFrameFunctionalGroupsSequence
    if len(frames) != int(image.get("NumberOfFrames") or 0):
        raise PacsError(f"source image {image.get('SOPInstanceUID', '?')} has {len(frames)} per-frame functional "
                        f"groups for NumberOfFrames {image.get('NumberOfFrames')}")
    planes = []
    for number, groups in enumerate(frames, start=1):
        plane = pydicom.Dataset()
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
            if keyword in image:
                plane[keyword] = image[keyword]
        for sequence in _FUNCTIONAL_GROUPS:
            for item in (groups.get(sequence) or shared.get(sequence) or [])[:1]:
                plane.update(item)
        planes.append((f"source slice {image.get('SOPInstanceUID', '?')} frame {number}", plane))
    return planes


def _mask_on_source(mask: sitk.Image, source: list[pydicom.Dataset]) -> np.ndarray:
    """The mask at the centre of every source pixel: (frames, rows, columns), uint8, a frame per _planes."""
    voxels = sitk.GetArrayViewFromImage(mask)
    to_index = np.linalg.inv(np.reshape(mask.GetDirection(), (3, 3)) * mask.GetSpacing())
    origin, size = np.array(mask.GetOrigin()), np.array(mask.GetSize())
    frames = []
    for where, dataset in _planes(source):
        orientation = np.array(dataset.ImageOrientationPatient, float)
        row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
        rows, columns = np.mgrid[0:int(dataset.Rows), 0:int(dataset.Columns)]
        # IOP[0:3] runs along a row (increasing column), IOP[3:6] down a column (increasing row).
        lps = (np.array(dataset.ImagePositionPatient, float) + columns[..., None] * column_spacing * orientation[:3]
               + rows[..., None] * row_spacing * orientation[3:])
        index = (lps - origin) @ to_index.T
        nearest = np.rint(index)
        if (off := float(np.abs(index - nearest).max())) > GRID_TOLERANCE:
            raise PacsError(f"{where} is {off:.3f} voxel off the NIfTI grid: "
                            "the headers are not of the converted series")
        if (nearest < 0).any() or (nearest >= size).any():
            raise PacsError(f"{where} reaches outside the NIfTI grid: the headers are not of the converted series")
        i, j, k = nearest.astype(int).transpose(2, 0, 1)
        frames.append(voxels[k, j, i])
    return (np.stack(frames) > 0).astype(np.uint8)


def _shared_planes(source: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The source as highdicom (0.28.2) takes it: it reads a multi-frame image's orientation and pixel
    spacing from the shared functional groups only, so per-frame ones (as Philips writes them) move there,
    in a copy, when the same in every frame."""
    if not _multiframe(source):
        return source
    [image] = source
    shared = (image.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()])[0]
    moved = [sequence for sequence in _FUNCTIONAL_GROUPS[1:] if not shared.get(sequence)]
    if not moved:
        return source
    image, shared = copy.deepcopy(image), copy.deepcopy(shared)
    frames = image.PerFrameFunctionalGroupsSequence
    for sequence in moved:
        if any(frame[sequence][0] != frames[0][sequence][0] for frame in frames):
            raise PacsError(f"source image {image.SOPInstanceUID}: its frames differ in {sequence}, and highdicom "
                            "makes a SEG of a multi-frame image only with one orientation and pixel spacing")
        shared[sequence] = frames[0][sequence]
        for frame in frames:
            del frame[sequence]
    image.SharedFunctionalGroupsSequence = [shared]
    return [image]


def _segmentation(mask: sitk.Image, source: list[pydicom.Dataset]) -> hd.seg.Segmentation:
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Cerebral microbleed",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure, segmented_property_type=MICROBLEED,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(NAME, codes.cid7162.ArtificialIntelligence,
                                                                      __version__))
    frames = _mask_on_source(mask, source)
    return hd.seg.Segmentation(
        source_images=_shared_planes(source), pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=generate_uid(), series_number=SERIES_NUMBERS["dicom_seg"], sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer=NAME, manufacturer_model_name=NAME, software_versions=__version__,
        device_serial_number=__version__,  # software has no serial number; the attribute is type 1 here
        series_description=f"{NAME} microbleeds", coding_schemes=[CODING_SCHEME],
        omit_empty_frames=bool(frames.any()))  # a SEG needs frames: an empty mask keeps them all


def _report(table: pd.DataFrame, source: list[pydicom.Dataset]) -> hd.sr.Comprehensive3DSR:
    observer = hd.sr.ObserverContext(codes.DCM.Device, hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[NAME, __version__]), name=NAME, manufacturer_name=NAME, model_name=__version__))
    count = hd.sr.MeasurementsAndQualitativeEvaluations(
        hd.sr.TrackingIdentifier(generate_uid(), "microbleed count"), finding_type=MICROBLEED, algorithm_id=_ALGORITHM,
        measurements=[hd.sr.Measurement(COUNT, len(table), codes.UCUM.NoUnits)])
    report = hd.sr.MeasurementReport(
        hd.sr.ObservationContext(observer_device_context=observer), codes.LN.BrainMRI,
        [count, *(_microbleed(row, source[0]) for row in table.to_dict("records"))])
    return hd.sr.Comprehensive3DSR(
        evidence=source, content=report, series_instance_uid=generate_uid(), series_number=SERIES_NUMBERS["dicom_sr"],
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=NAME, is_complete=True,
        series_description=f"{NAME} microbleed report", software_versions=__version__, coding_schemes=[CODING_SCHEME])


def _microbleed(row: dict, reference: pydicom.Dataset):
    # TID 1411, not 1410: a microbleed is a volume, and 1411's Volume Surface may be a POINT (its centroid).
    centroid_lps = np.array([[-row["centroid_x_ras_mm"], -row["centroid_y_ras_mm"], row["centroid_z_ras_mm"]]])
    where = hd.sr.VolumeSurface(hd.sr.GraphicTypeValues3D.POINT, centroid_lps, reference.FrameOfReferenceUID,
                                source_series=hd.sr.SourceSeriesForSegmentation(reference.SeriesInstanceUID))
    located = isinstance(row.get("region"), str)
    sites = [hd.sr.FindingSite(_private(row["region"]), **_SIDES.get(row.get("hemisphere"), {}))] if located else None
    category = row.get("region_category")
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        hd.sr.TrackingIdentifier(generate_uid(), f"microbleed {row['lesion_id']}"), referenced_volume_surface=where,
        finding_type=MICROBLEED, finding_category=codes.SCT.MorphologicallyAbnormalStructure, algorithm_id=_ALGORITHM,
        finding_sites=sites, measurements=[hd.sr.Measurement(concept, float(row[column]), unit)
                                           for column, concept, unit in _MEASURED if np.isfinite(row[column])],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(MARS_CATEGORY, _private(category))]
        if isinstance(category, str) else None)


def _secondary_capture(png: Path, source: list[pydicom.Dataset]) -> hd.sc.SCImage:
    from PIL import Image

    with Image.open(png) as picture:
        pixels = np.asarray(picture.convert("RGB"))  # drops the alpha channel
    capture = hd.sc.SCImage.from_ref_dataset(
        source[0], pixels, hd.PhotometricInterpretationValues.RGB, 8, hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=generate_uid(), series_number=SERIES_NUMBERS["dicom_qc"], sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer=NAME,
        patient_orientation=("L", "P"),  # axial panels in radiological view (report.write_qc_picture)
        series_description=f"{NAME} QC picture", software_versions=__version__)
    capture.BodyPartExamined = source[0].get("BodyPartExamined") or "HEAD"  # unpaired: the series needs no Laterality
    return capture


def _deidentified(dataset: pydicom.Dataset, label: str) -> pydicom.Dataset:
    """A copy of a source header without the patient's identity, so that nothing highdicom copies from it
    (the patient and study modules, the scanner as contributing equipment) carries it. Study and series
    UIDs (and dates) stay: the SEG must still overlay the source series in the study."""
    dataset = copy.deepcopy(dataset)
    dataset.PatientName, dataset.PatientID = f"{label}^", label  # ^: a one-component name, as PN wants
    for keyword in _EMPTIED:
        if keyword in dataset:
            setattr(dataset, keyword, None)
    for keyword in _DROPPED:
        if keyword in dataset:
            del dataset[keyword]
    return dataset
