"""Sampling grids and shape rasterisers in patient millimetres.

Every structure is described in millimetres in an LPS patient frame (x to the patient's left, y to
posterior, z to superior; the origin sits at the carina on the body's axis), and is rasterised at
voxel centres of whatever grid a reconstruction uses. That is what makes the reconstructions of one
scan show the same anatomy and the same findings at different resolutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape and spacing in (z, y, x), and the patient-frame position of voxel 0."""

    shape_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    origin_zyx: tuple[float, float, float]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates as broadcastable (D,1,1), (1,H,1), (1,1,W) float32 arrays."""
        out = []
        for axis, (n, step, start) in enumerate(
            zip(self.shape_zyx, self.spacing_zyx, self.origin_zyx, strict=False)
        ):
            coords = (start + step * np.arange(n)).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis] = n
            out.append(coords.reshape(shape))
        return out[0], out[1], out[2]

    def to_index(self, point_zyx: np.ndarray) -> np.ndarray:
        """Continuous voxel index of a patient-frame point."""
        return (np.asarray(point_zyx, float) - self.origin_zyx) / self.spacing_zyx

    def window(self, lo_zyx: np.ndarray, hi_zyx: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices covering the millimetre box [lo, hi], or None when it misses the grid."""
        lo = np.floor(self.to_index(lo_zyx)).astype(int)
        hi = np.ceil(self.to_index(hi_zyx)).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape_zyx)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=False))

    def local_axes(self, win: tuple[slice, slice, slice]) -> tuple[np.ndarray, ...]:
        """Voxel-centre coordinates of a window, broadcastable like `axes()`."""
        out = []
        for axis, (sl, step, start) in enumerate(
            zip(win, self.spacing_zyx, self.origin_zyx, strict=False)
        ):
            coords = (start + step * np.arange(sl.start, sl.stop)).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis] = coords.size
            out.append(coords.reshape(shape))
        return tuple(out)


def segment_distance(
    axes: tuple[np.ndarray, ...], p0: np.ndarray, p1: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distance from voxel centres to the segment p0-p1 (zyx mm), and the position t in [0, 1]."""
    z, y, x = axes
    d = np.asarray(p1, np.float32) - np.asarray(p0, np.float32)
    length2 = float(d @ d) or 1e-6
    rz, ry, rx = z - p0[0], y - p0[1], x - p0[2]
    t = np.clip((rz * d[0] + ry * d[1] + rx * d[2]) / length2, 0.0, 1.0)
    dist = np.sqrt((rz - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rx - t * d[2]) ** 2)
    return dist, t


def ellipsoid_radius(
    axes: tuple[np.ndarray, ...], centre: np.ndarray, semi: np.ndarray, angle: float = 0.0
) -> np.ndarray:
    """Normalised radius (1 on the surface) of an ellipsoid turned by `angle` radians about z."""
    z, y, x = axes
    dz, dy, dx = z - centre[0], y - centre[1], x - centre[2]
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((dz / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dx / semi[2]) ** 2)


class Canvas:
    """A HU volume being painted, plus named boolean masks that later painters consult."""

    def __init__(self, grid: Grid, fill: float = -1000.0):
        self.grid = grid
        self.hu = np.full(grid.shape_zyx, fill, np.float32)
        self.masks: dict[str, np.ndarray] = {}

    def mask(self, name: str) -> np.ndarray:
        if name not in self.masks:
            self.masks[name] = np.zeros(self.grid.shape_zyx, bool)
        return self.masks[name]

    def capsule(
        self,
        p0: np.ndarray,
        p1: np.ndarray,
        radius: float,
        value: float,
        where: np.ndarray | None = None,
        record: np.ndarray | None = None,
    ) -> None:
        """Paint a round-ended tube; `where` limits it (full-size mask), `record` collects its voxels."""
        p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
        lo = np.minimum(p0, p1) - radius
        hi = np.maximum(p0, p1) + radius
        win = self.grid.window(lo, hi)
        if win is None:
            return
        dist, _ = segment_distance(self.grid.local_axes(win), p0, p1)
        inside = dist <= radius
        if where is not None:
            inside &= where[win]
        self.hu[win][inside] = value
        if record is not None:
            record[win] |= inside

    def blob(
        self,
        centre: np.ndarray,
        semi: np.ndarray,
        value: float,
        angle: float = 0.0,
        where: np.ndarray | None = None,
        record: np.ndarray | None = None,
        shell: tuple[float, float] | None = None,
    ) -> np.ndarray | None:
        """Paint an ellipsoid (or the shell between two normalised radii); returns its local mask."""
        centre, semi = np.asarray(centre, np.float32), np.asarray(semi, np.float32)
        reach = semi.max() * (shell[1] if shell else 1.0)
        win = self.grid.window(centre - reach, centre + reach)
        if win is None:
            return None
        r = ellipsoid_radius(self.grid.local_axes(win), centre, semi, angle)
        inside = (r <= 1.0) if shell is None else ((r > shell[0]) & (r <= shell[1]))
        if where is not None:
            inside &= where[win]
        self.hu[win][inside] = value
        if record is not None:
            record[win] |= inside
        return inside
