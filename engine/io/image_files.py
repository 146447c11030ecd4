"""NIfTI, NRRD and MetaImage files ↔ Volume, reoriented to the DICOM-like array convention of `engine.volume`.

NIfTI is read with nibabel, as CT-CLIP's own preprocessing does (`get_fdata` semantics, header scaling applied);
NRRD and MHA/MHD with SimpleITK. Every volume comes out with slices growing toward Superior, rows toward Posterior
and columns toward patient Left (nearest axes; the exact, possibly oblique, direction is kept) — the layout of a
standard axial DICOM series, so the viewer and the models see one convention. Reorientation permutes and flips the
array only; no voxel is interpolated.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.errors import CorruptStudy, UnsupportedStudy
from engine.io.memory import check_fits_in_memory
from engine.volume import SPL_AXES, Volume, VolumeMeta, reorient_array, shortest_decimal

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_INT16 = np.iinfo(np.int16)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for the single-file volume formats this module reads (by name)."""
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES + ITK_SUFFIXES)


def format_name(path: str | os.PathLike[str]) -> str:
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "NIfTI"
    if name.endswith((".nrrd", ".nhdr")):
        return "NRRD"
    return "MetaImage"


# --- reading --------------------------------------------------------------------------------------------------------
def read_image_file(path: str | os.PathLike[str], *, rescale: tuple[float, float] | None = None) -> Volume:
    """Read a NIfTI/NRRD/MHA file as a Volume in HU.

    `rescale=(slope, intercept)` is applied on top of the values the file reports (for NIfTI, after nibabel's own
    header scaling — exactly what CT-CLIP's loader does with CT-RATE's metadata CSV). Leave it None for files
    that already hold HU.
    """
    path = Path(path)
    if format_name(path) == "NIfTI":
        values, columns_lps, origin_lps, spacing, warnings = _read_nifti(path, rescale)
    else:
        values, columns_lps, origin_lps, spacing, warnings = _read_itk(path, rescale)
    hu = _to_hu_dtype(values)
    hu, direction, spacing_kij, origin = reorient_array(hu, columns_lps, spacing, origin_lps, SPL_AXES)
    if hu.shape[0] == 1:
        warnings.append("Single image: shown as 2D; the slice spacing is nominal.")
    meta = VolumeMeta(modality="CT", description=path.name, source_format=format_name(path))
    return Volume(np.ascontiguousarray(hu), spacing_kij, origin, direction, meta, warnings)


def _read_nifti(path: Path, rescale: tuple[float, float] | None):  # type: ignore[no-untyped-def]
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(str(path))
    except (ImageFileError, OSError, EOFError, ValueError) as exc:
        raise CorruptStudy(f"{path.name} is not a readable NIfTI file ({_reason(exc)}).") from exc
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise UnsupportedStudy(f"{path.name} has {len(img.shape)} dimensions {img.shape}; ctdesk opens 3D CT volumes.")
    check_fits_in_memory(int(np.prod(shape)) * 2 * 2, what=path.name)

    warnings: list[str] = []
    try:
        dataobj = img.dataobj
        slope = getattr(dataobj, "slope", 1.0)
        inter = getattr(dataobj, "inter", 0.0)
        raw = np.asanyarray(dataobj.get_unscaled()) if hasattr(dataobj, "get_unscaled") else np.asanyarray(dataobj)
    except Exception as exc:  # OSError, EOFError, zlib.error, ValueError: truncated gzip, short read
        raise CorruptStudy(f"{path.name} is damaged: its voxel data cannot be read ({_reason(exc)}).") from exc
    raw = raw.reshape(shape)
    header_scaled = not (slope == 1.0 and inter == 0.0)
    values: np.ndarray
    if header_scaled:
        values = raw.astype(np.float64) * float(slope) + float(inter)
    else:
        values = raw
    if rescale is not None:
        if header_scaled:
            warnings.append(
                f"The file's header already scales voxels (slope {slope:g}, intercept {inter:g}); the given rescale "
                "was applied on top — check the values are not converted to HU twice."
            )
        values = values.astype(np.float64) * float(rescale[0]) + float(rescale[1])

    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CorruptStudy(f"{path.name} has an invalid orientation matrix (affine); its geometry is unknown.")
    lps = _RAS_TO_LPS @ affine[:3, :]
    zooms = [shortest_decimal(z) for z in img.header.get_zooms()[:3]]
    while len(zooms) < 3:
        zooms.append(1.0)
    if any(z <= 0 for z in zooms):
        zooms = [float(np.linalg.norm(lps[:, c])) for c in range(3)]
    columns = np.stack([lps[:, c] / np.linalg.norm(lps[:, c]) for c in range(3)], axis=1)
    return values, columns, lps[:, 3], zooms, warnings


def _read_itk(path: Path, rescale: tuple[float, float] | None):  # type: ignore[no-untyped-def]
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = reader.GetSize()
        if len(size) not in (2, 3) or reader.GetNumberOfComponents() != 1:
            raise UnsupportedStudy(
                f"{path.name} is not a single-channel 2D/3D image (size {size}, "
                f"{reader.GetNumberOfComponents()} components)."
            )
        check_fits_in_memory(int(np.prod(size)) * 2 * 2, what=path.name)
        image = reader.Execute()
    except RuntimeError as exc:
        raise CorruptStudy(f"{path.name} is not a readable {format_name(path)} file ({_reason(exc)}).") from exc
    arr = sitk.GetArrayFromImage(image)  # (z, y, x)
    if arr.ndim == 2:
        arr = arr[None]
    spacing_xyz = list(image.GetSpacing()) + [1.0] * (3 - image.GetDimension())
    direction = np.eye(3)
    d = np.asarray(image.GetDirection(), dtype=np.float64)
    dim = image.GetDimension()
    direction[:dim, :dim] = d.reshape(dim, dim)
    origin = np.zeros(3)
    origin[:dim] = image.GetOrigin()
    values: np.ndarray = arr
    if rescale is not None:
        values = arr.astype(np.float64) * float(rescale[0]) + float(rescale[1])
    # array axes are (z, y, x): LPS direction columns in that order
    columns = np.stack([direction[:, 2], direction[:, 1], direction[:, 0]], axis=1)
    spacing = [shortest_decimal(spacing_xyz[2]), shortest_decimal(spacing_xyz[1]), shortest_decimal(spacing_xyz[0])]
    # data axis d ↔ column d: reorder so the generic reorientation sees (axis0, axis1, axis2) = (z, y, x)
    return values, columns, origin, spacing, []


def _to_hu_dtype(values: np.ndarray) -> np.ndarray:
    """int16 when every value is an integer in int16 range (lossless), else float32."""
    if values.dtype == np.int16:
        return values
    if np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.bool_):
        if values.size == 0 or (values.min() >= _INT16.min and values.max() <= _INT16.max):
            return values.astype(np.int16)
        return values.astype(np.float32)
    if np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        if not finite.all():
            raise CorruptStudy("The volume contains NaN or infinite voxel values.")
        in_range = values.size and values.min() >= _INT16.min and values.max() <= _INT16.max
        if in_range and np.all(values == np.rint(values)):
            return values.astype(np.int16)
        return values.astype(np.float32)
    raise UnsupportedStudy(f"Voxel type {values.dtype} is not a CT intensity type.")


# --- writing --------------------------------------------------------------------------------------------------------
def write_image_file(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write a Volume to .nii/.nii.gz (nibabel; CT-RATE's voxel order i→L, j→P, k→S) or .nrrd/.mha (SimpleITK)."""
    path = Path(path)
    if not is_image_file(path):
        raise ValueError(f"Cannot tell the format of {path.name}: use .nii.gz, .nii, .nrrd or .mha")
    path.parent.mkdir(parents=True, exist_ok=True)
    m = volume.index_to_lps_matrix  # columns: k, i, j
    if format_name(path) == "NIfTI":
        import nibabel as nib

        data = np.transpose(volume.hu, (2, 1, 0))  # (j, i, k): NIfTI i → L, j → P, k → S for an axial volume
        affine_lps = np.eye(4)
        affine_lps[:3, 0], affine_lps[:3, 1], affine_lps[:3, 2] = m[:3, 2], m[:3, 1], m[:3, 0]
        affine_lps[:3, 3] = m[:3, 3]
        affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
        img = nib.Nifti1Image(np.asarray(data), affine_ras)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_qform(affine_ras, code=1)
        img.header.set_sform(affine_ras, code=1)
        img.header.set_slope_inter(1.0, 0.0)
        nib.save(img, str(path))
        return path
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(volume.hu))  # numpy (k, i, j) → ITK (x=j, y=i, z=k)
    image.SetSpacing((volume.spacing_mm[2], volume.spacing_mm[1], volume.spacing_mm[0]))
    image.SetOrigin(volume.origin_lps_mm)
    d = volume.direction
    image.SetDirection(tuple(np.stack([d[:, 2], d[:, 1], d[:, 0]], axis=1).ravel()))
    sitk.WriteImage(image, str(path), True)
    return path


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]

