"""DICOM series synthesised from images with pydicom, as scanners export them: one MR image storage
file per slice, or one Enhanced MR image storage file with the slices as frames; with the tags that
identify a series (ImageType, SeriesDescription, sequence, echo time) and the patient's and study's
identity. For the tests of dicom.py and pacs.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid


@dataclass(frozen=True)
class Patient:
    name: str = "Doe^Jane"
    patient_id: str = "P0001"
    birth_date: str = "19500101"
    sex: str = "F"


@dataclass(frozen=True)
class Study:
    date: str = "20260105"
    time: str = "101500"
    study_uid: str = ""
    frame_of_reference_uid: str = ""

    @classmethod
    def new(cls, date: str = "20260105", time: str = "101500") -> Study:
        return cls(date, time, generate_uid(), generate_uid())


#: How common series look in the tags the rule table reads (dicom_rules.toml).
KINDS: dict[str, dict] = {
    "t2star": {"SeriesDescription": "t2star_gre_axial", "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"],
               "ScanningSequence": "GR", "EchoTime": 20.0, "RepetitionTime": 30.0},
    "swi": {"SeriesDescription": "SWI_Images", "ImageType": ["DERIVED", "PRIMARY", "M", "SWI", "NORM", "DIS2D"],
            "ScanningSequence": "GR", "EchoTime": 20.0, "RepetitionTime": 28.0},
    "phase": {"SeriesDescription": "SWI_Pha_Images", "ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"],
              "ScanningSequence": "GR", "EchoTime": 20.0, "RepetitionTime": 28.0},
    "minip": {"SeriesDescription": "mIP_Images(SW)", "ImageType": ["DERIVED", "PRIMARY", "MNIP", "ND"],
              "ScanningSequence": "GR", "EchoTime": 20.0, "RepetitionTime": 28.0},
    "localizer": {"SeriesDescription": "AAHead_Scout", "ImageType": ["ORIGINAL", "PRIMARY", "M", "LOCALIZER"],
                  "ScanningSequence": "GR", "EchoTime": 3.0, "RepetitionTime": 8.0},
    "t1": {"SeriesDescription": "t1_mprage_sag", "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"],
           "ScanningSequence": ["GR", "IR"], "EchoTime": 2.3, "RepetitionTime": 2300.0},
    "t2": {"SeriesDescription": "t2_tse_tra", "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"],
           "ScanningSequence": "SE", "EchoTime": 90.0, "RepetitionTime": 5000.0},
    "unknown": {"SeriesDescription": "research_seq_42", "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"],
                "ScanningSequence": "RM", "EchoTime": 5.0, "RepetitionTime": 10.0},
}


def stored_values(image: sitk.Image) -> np.ndarray:
    """The image's voxels as the series stores them (unsigned 16-bit, rounded): what a conversion must give back."""
    return np.clip(np.round(sitk.GetArrayFromImage(image)), 0, 65535).astype(np.uint16)


def _dataset(sop_class: str, kind: str, stored: np.ndarray, patient: Patient, study: Study, series_uid: str,
             series_number: int) -> Dataset:
    """What every image of a series holds, single- or multi-frame: identity, patient, study, series, pixel format."""
    tags = KINDS[kind]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Manufacturer, ds.MagneticFieldStrength = "MR", "Phantom", 3
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = \
        patient.name, patient.patient_id, patient.birth_date, patient.sex
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = \
        study.study_uid, series_uid, study.frame_of_reference_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.date
    ds.StudyTime, ds.AcquisitionTime = study.time, f"{int(study.time[:2]):02d}{series_number % 60:02d}00"
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", f"ACC{study.date}", ""
    ds.SeriesNumber, ds.InstanceNumber = series_number, 1
    ds.ProtocolName, ds.SeriesDescription, ds.ImageType = tags["SeriesDescription"], tags["SeriesDescription"], \
        tags["ImageType"]
    ds.MRAcquisitionType, ds.BodyPartExamined = "3D", "HEAD"
    ds.PatientPosition, ds.PositionReferenceIndicator = "HFS", ""
    ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _plane(image: sitk.Image, k: int) -> dict:
    """Slice k's position, orientation, spacing, as a scanner writes them: decimal strings hold 16 characters,
    so to 1e-6 mm."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing_x, spacing_y, spacing_z = image.GetSpacing()
    return {"ImagePositionPatient": [round(v, 6) for v in image.TransformIndexToPhysicalPoint((0, 0, k))],
            "ImageOrientationPatient": [round(float(v), 8) for v in (*direction[:, 0], *direction[:, 1])],
            "PixelSpacing": [round(spacing_y, 6), round(spacing_x, 6)], "SliceThickness": round(spacing_z, 6)}


def write_series(image: sitk.Image, folder: Path, kind: str, *, patient: Patient = Patient(), study: Study,
                 series_number: int = 1, prefix: str = "IM") -> list[Path]:
    """One file per slice of `image` (its k axis), on its grid (origin, spacing, direction), in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tags, stored, series_uid = KINDS[kind], stored_values(image), generate_uid()
    paths = []
    for k in range(stored.shape[0]):
        ds = _dataset(MRImageStorage, kind, stored, patient, study, series_uid, series_number)
        ds.InstanceNumber = k + 1
        for name in ("ScanningSequence", "EchoTime", "RepetitionTime"):
            setattr(ds, name, tags[name])
        ds.SequenceVariant, ds.ScanOptions, ds.FlipAngle, ds.EchoTrainLength = "NONE", "", 15, 1
        for name, value in _plane(image, k).items():
            setattr(ds, name, value)
        ds.PixelData = stored[k].tobytes()
        paths.append(folder / f"{prefix}{series_number:03d}_{k + 1:04d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


#: Enhanced MR's EchoPulseSequence for a classic ScanningSequence (IR and EP have attributes of their own).
_ECHO_PULSE = {"GR": "GRADIENT", "SE": "SPIN"}


def _item(**values) -> list[Dataset]:
    """A one-item sequence of `values`."""
    item = Dataset()
    for name, value in values.items():
        setattr(item, name, value)
    return [item]


def write_enhanced_series(image: sitk.Image, path: Path, kind: str, *, patient: Patient = Patient(), study: Study,
                          series_number: int = 1) -> Path:
    """One Enhanced MR Image Storage file at `path` with the slices of `image` (its k axis) as frames, in slice
    order, as Siemens XA and Philips scanners export: the series' identifying tags where the standard puts them
    (ImageType at the top and as each frame's FrameType; the echo time in MREchoSequence, the repetition time in
    MRTimingAndRelatedParametersSequence; ScanningSequence as EchoPulseSequence), orientation and pixel spacing in
    the shared functional groups, each frame's position in its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tags, stored = KINDS[kind], stored_values(image)
    ds = _dataset(EnhancedMRImageStorage, kind, stored, patient, study, generate_uid(), series_number)
    sequences = set(np.atleast_1d(tags["ScanningSequence"]))
    pulses = {_ECHO_PULSE[s] for s in sequences if s in _ECHO_PULSE}
    ds.EchoPulseSequence = "BOTH" if len(pulses) > 1 else pulses.pop() if pulses else "GRADIENT"
    ds.InversionRecovery, ds.EchoPlanarPulseSequence = ("YES" if s in sequences else "NO" for s in ("IR", "EP"))
    ds.PulseSequenceName, ds.MultipleSpinEcho, ds.MultiPlanarExcitation, ds.PhaseContrast = kind, "NO", "NO", "NO"
    ds.AcquisitionDateTime = ds.AcquisitionDate + ds.AcquisitionTime
    del ds.AcquisitionDate, ds.AcquisitionTime  # a classic image's; enhanced has the date-time
    ds.ContentQualification, ds.ResonantNucleus, ds.KSpaceFiltering = "RESEARCH", "1H", "NONE"
    ds.PixelPresentation, ds.VolumetricProperties, ds.VolumeBasedCalculationTechnique = "MONOCHROME", "VOLUME", "NONE"
    ds.ComplexImageComponent, ds.AcquisitionContrast = "MAGNITUDE", "UNKNOWN"
    ds.NumberOfFrames = stored.shape[0]
    plane = _plane(image, 0)
    ds.SharedFunctionalGroupsSequence = _item(
        PlaneOrientationSequence=_item(ImageOrientationPatient=plane["ImageOrientationPatient"]),
        PixelMeasuresSequence=_item(PixelSpacing=plane["PixelSpacing"], SliceThickness=plane["SliceThickness"]),
        MREchoSequence=_item(EffectiveEchoTime=tags["EchoTime"]),
        MRTimingAndRelatedParametersSequence=_item(RepetitionTime=tags["RepetitionTime"], FlipAngle=15,
                                                   EchoTrainLength=1),
        MRImageFrameTypeSequence=_item(FrameType=tags["ImageType"], PixelPresentation="MONOCHROME",
                                       VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE",
                                       ComplexImageComponent="MAGNITUDE", AcquisitionContrast="UNKNOWN"))
    dimension_uid = generate_uid()
    ds.DimensionOrganizationSequence = _item(DimensionOrganizationUID=dimension_uid)
    ds.DimensionIndexSequence = [
        _item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=pointer,
              FunctionalGroupPointer=0x00209111)[0] for pointer in (0x00209056, 0x00209057)]  # stack, position in it
    ds.PerFrameFunctionalGroupsSequence = [_item(
        PlanePositionSequence=_item(ImagePositionPatient=_plane(image, k)["ImagePositionPatient"]),
        FrameContentSequence=_item(StackID="1", InStackPositionNumber=k + 1, DimensionIndexValues=[1, k + 1],
                                   FrameAcquisitionDateTime=ds.AcquisitionDateTime,
                                   FrameReferenceDateTime=ds.AcquisitionDateTime, FrameAcquisitionDuration=1000.0)
    )[0] for k in range(stored.shape[0])]
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def oblique(image: sitk.Image, degrees: float = 12.0) -> sitk.Image:
    """A copy of `image` on a tilted grid (same voxels): series are rarely aligned with the scanner's axes."""
    tilted = sitk.Image(image)
    tilted.SetDirection(sitk.VersorTransform((0.2, 0.3, 1.0), np.radians(degrees)).GetMatrix())
    return tilted


def headers(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
