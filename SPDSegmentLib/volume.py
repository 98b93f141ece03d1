"""A scalar volume with its exact voxel-to-patient geometry, and the slice view the engine works in.

Arrays follow Slicer's ``arrayFromVolume`` convention: indexed ``[k, j, i]``. The geometry is the full
4x4 IJK->RAS matrix (never assumed diagonal), so flipped, oblique and anisotropic volumes work. The
engine segments slice by slice along the voxel axis closest to the patient's axial normal; everything
else (prompts, saliency, masks) is expressed in that ``(slice, row, col)`` frame.

The frame is anatomical, not the file's voxel order: slices run foot to head, and each slice image is
shown the way a radiologist reads it (rows anterior to posterior, columns patient right to left). So a
volume stored with flipped axes gives SAM the very same images, and the same result, as the unflipped
one: SAM is not mirror-invariant, and it was trained on images in reading orientation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Volume:
    """Voxels ``array[k, j, i]`` plus ``ijk_to_ras`` (4x4). ``name`` is used in messages and outputs."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    name: str = "volume"
    modality: str = field(default="auto")  # "CT", "MR" or "auto" (guessed from intensities)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"{self.name}: expected a 3D array, got shape {self.array.shape}")
        m = np.asarray(self.ijk_to_ras, dtype=float)
        if m.shape != (4, 4) or not np.allclose(m[3], [0, 0, 0, 1]):
            raise ValueError(f"{self.name}: ijk_to_ras must be an affine 4x4 matrix")
        if abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise ValueError(f"{self.name}: ijk_to_ras is singular (zero spacing?)")
        object.__setattr__(self, "ijk_to_ras", m)

    # --- geometry -------------------------------------------------------------------------------
    @cached_property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm (column norms of the direction*spacing block)."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape
        return i, j, k

    @cached_property
    def slice_axis(self) -> int:
        """IJK axis (0=i, 1=j, 2=k) whose direction is closest to patient superior-inferior."""
        directions = self.ijk_to_ras[:3, :3] / self.spacing
        return int(np.argmax(np.abs(directions[2])))

    @cached_property
    def _in_plane_axes(self) -> tuple[int, int]:
        """IJK axes of the slice image's rows and columns, in array order (slow, fast)."""
        others = [a for a in (2, 1, 0) if a != self.slice_axis]
        return others[0], others[1]

    @property
    def num_slices(self) -> int:
        return self.shape_ijk[self.slice_axis]

    @property
    def slice_shape(self) -> tuple[int, int]:
        r, c = self._in_plane_axes
        return self.shape_ijk[r], self.shape_ijk[c]

    @property
    def in_plane_spacing(self) -> tuple[float, float]:
        """(row, col) pixel size in mm of slice images."""
        r, c = self._in_plane_axes
        return float(self.spacing[r]), float(self.spacing[c])

    @property
    def slice_spacing(self) -> float:
        return float(self.spacing[self.slice_axis])

    @property
    def _src_axes(self) -> tuple[int, int, int]:
        """Array axes holding (slice, row, col); array axis of IJK axis a is 2 - a."""
        r, c = self._in_plane_axes
        return 2 - self.slice_axis, 2 - r, 2 - c

    @cached_property
    def _flips(self) -> tuple[bool, bool, bool]:
        """Which of (slice, row, col) run against the anatomical frame: slices foot to head (+S), rows
        and columns towards the negative of their dominant RAS axis (posterior / patient left / foot),
        as in radiological reading."""
        directions = self.ijk_to_ras[:3, :3] / self.spacing
        r, c = self._in_plane_axes
        flips = []
        for axis, want_positive in ((self.slice_axis, True), (r, False), (c, False)):
            d = directions[:, axis]
            dominant = d[int(np.argmax(np.abs(d)))]
            flips.append(bool(dominant < 0) if want_positive else bool(dominant > 0))
        return tuple(flips)

    @property
    def _src_sizes(self) -> tuple[int, int, int]:
        return (self.num_slices, *self.slice_shape)

    def _flip_view(self, src: np.ndarray) -> np.ndarray:
        index = tuple(slice(None, None, -1) if f else slice(None) for f in self._flips)
        return src[index]

    def slices(self) -> np.ndarray:
        """View of the voxels as ``[slice, row, col]`` in the anatomical frame (no copy)."""
        return self._flip_view(np.moveaxis(self.array, self._src_axes, (0, 1, 2)))

    def to_array_order(self, src: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`slices`: a ``[slice, row, col]`` array back to ``[k, j, i]``."""
        return np.moveaxis(self._flip_view(src), (0, 1, 2), self._src_axes)

    # --- coordinate conversion ------------------------------------------------------------------
    def ras_to_ijk_points(self, ras: np.ndarray) -> np.ndarray:
        """Continuous IJK of N RAS points (exact inverse, no rounding)."""
        ras = np.atleast_2d(np.asarray(ras, dtype=float))
        h = np.c_[ras, np.ones(len(ras))]
        return (h @ self.ras_to_ijk.T)[:, :3]

    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        h = np.c_[ijk, np.ones(len(ijk))]
        return (h @ self.ijk_to_ras.T)[:, :3]

    def ijk_to_src(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous IJK -> continuous (slice, row, col)."""
        r, c = self._in_plane_axes
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        src = np.stack([ijk[:, self.slice_axis], ijk[:, r], ijk[:, c]], axis=1)
        for axis, (flip, size) in enumerate(zip(self._flips, self._src_sizes)):
            if flip:
                src[:, axis] = (size - 1) - src[:, axis]
        return src

    def src_to_ijk(self, src: np.ndarray) -> np.ndarray:
        src = np.array(np.atleast_2d(np.asarray(src, dtype=float)))
        for axis, (flip, size) in enumerate(zip(self._flips, self._src_sizes)):
            if flip:
                src[:, axis] = (size - 1) - src[:, axis]
        r, c = self._in_plane_axes
        ijk = np.empty_like(src)
        ijk[:, self.slice_axis], ijk[:, r], ijk[:, c] = src[:, 0], src[:, 1], src[:, 2]
        return ijk

    def ras_to_src(self, ras: np.ndarray) -> np.ndarray:
        return self.ijk_to_src(self.ras_to_ijk_points(ras))

    def src_to_ras(self, src: np.ndarray) -> np.ndarray:
        return self.ijk_to_ras_points(self.src_to_ijk(src))

    def with_array(self, array: np.ndarray, name: str | None = None) -> Volume:
        """Same geometry, other voxels (e.g. a mask or a saliency map)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} does not match volume shape {self.array.shape}")
        return Volume(array, self.ijk_to_ras, name or self.name, self.modality)

    def guessed_modality(self) -> str:
        if self.modality in ("CT", "MR"):
            return self.modality
        lo = float(np.percentile(self.array[:: max(1, self.array.shape[0] // 16)], 1))
        return "CT" if lo < -400 else "MR"


def lps_ras_flip() -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0, 1.0])
