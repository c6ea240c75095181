"""Where things can go inside the lungs: a coarse placement map, lobes, and the vessel/airway tree.

Findings are placed once per scan in millimetres, on a 4 mm map of the normal anatomy, so every
reconstruction of the scan shows them at the same anatomical spot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synth.anatomy import Anatomy, AnatomyPainter, effusion_level, hilum
from synth.geometry import Canvas, Grid

MAP_SPACING = 4.0
SIDES = {-1: 'right', 1: 'left'}


@dataclass
class Segment:
    """One straight piece of the pulmonary vessel tree, with the bronchus that runs beside it."""

    p0: np.ndarray
    p1: np.ndarray
    radius: float
    generation: int
    side: int

    def bronchus(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Centre line and lumen radius of the accompanying bronchus (offset to one side)."""
        d = self.p1 - self.p0
        perp = np.cross(d, np.array([1.0, 0.0, 0.0]))
        norm = np.linalg.norm(perp)
        perp = perp / norm if norm > 1e-6 else np.array([0.0, 1.0, 0.0])
        shift = perp * (self.radius * 2.0 + 1.0)
        return self.p0 + shift, self.p1 + shift, self.radius * 0.9


class PlacementMap:
    """The normal lungs of one patient on a 4 mm grid, with depth below the pleura in mm."""

    def __init__(self, anat: Anatomy, heart: tuple | None = None, effusions: tuple = ()):
        """`heart` (centre, semi) and `effusions` ((side, depth), ...) take space from the lungs."""
        z0, z1 = anat.z_range
        lo = np.array([z0, -anat.half_depth - 10, -anat.half_width - 10])
        hi = np.array([z1, anat.half_depth + 10, anat.half_width + 10])
        shape = tuple(int(v) for v in np.ceil((hi - lo) / MAP_SPACING) + 1)
        self.grid = Grid(shape, (MAP_SPACING,) * 3, tuple(lo))
        self.anat = anat
        canvas = Canvas(self.grid)
        AnatomyPainter(anat, canvas).paint(heart=heart, skeleton=False)
        self.lung = {-1: canvas.masks['lung_r'], 1: canvas.masks['lung_l']}
        z, y, _ = self.grid.axes()
        for side, depth in effusions:
            self.lung[side] = self.lung[side] & (y < effusion_level(anat, side, depth, z))
        self.depth = {s: _depth(m) for s, m in self.lung.items()}
        self.z, self.y, self.x = (np.broadcast_to(a, shape) for a in self.grid.axes())
        self.shift = anat.cavity[2]
        self.half_depth_cavity = anat.cavity[1]
        self._cache: dict[tuple, np.ndarray] = {}

    def lobe(self, point: np.ndarray, side: int) -> str:
        """Lobe name of a point, from simplified oblique and horizontal fissures."""
        z, y, _ = point
        fissure = -30.0 + 0.9 * (y - self.shift) * 100.0 / max(self.half_depth_cavity, 1.0)
        if z < fissure:
            return 'lower lobe'
        if side < 0:
            return 'upper lobe' if z > -15.0 else 'middle lobe'
        return 'upper lobe' if z > -35.0 else 'upper lobe lingular segment'

    def candidates(
        self,
        side: int,
        min_depth: float = 0.0,
        max_depth: float = 1e9,
        zone: str = 'any',
        posterior: bool = False,
    ) -> np.ndarray:
        """Map coordinates (N, 3) of lung points matching a depth band and a vertical zone (cached)."""
        min_depth = float(np.ceil(min_depth / 2.0) * 2.0)  # 2 mm steps keep the cache small
        max_depth = float(np.floor(max_depth / 2.0) * 2.0) if max_depth < 1e8 else 1e9
        key = (side, min_depth, max_depth, zone, posterior)
        if key not in self._cache:
            self._cache[key] = self._candidates(side, min_depth, max_depth, zone, posterior)
        return self._cache[key]

    def _candidates(
        self, side: int, min_depth: float, max_depth: float, zone: str, posterior: bool
    ) -> np.ndarray:
        m = self.lung[side] & (self.depth[side] >= min_depth) & (self.depth[side] <= max_depth)
        if zone != 'any' and m.any():
            zs = self.z[m]
            lo, hi = np.percentile(zs, 1), np.percentile(zs, 99)
            cut = {'upper': (lo + 0.55 * (hi - lo), hi), 'lower': (lo, lo + 0.5 * (hi - lo))}[zone]
            m &= (self.z >= cut[0]) & (self.z <= cut[1])
        if posterior and m.any():
            m &= self.y >= np.median(self.y[m])
        return np.stack([self.z[m], self.y[m], self.x[m]], axis=1)

    def pick(self, rng: np.random.Generator, side: int, **kwargs) -> np.ndarray:
        """One random point (mm) with a sub-voxel jitter; relaxes the constraints when none fit."""
        pts = self.candidates(side, **kwargs)
        if len(pts) == 0:
            pts = self.candidates(side, min_depth=min(kwargs.get('min_depth', 0.0), 8.0))
        if len(pts) == 0:
            pts = self.candidates(side)
        p = pts[rng.integers(len(pts))]
        return p + rng.uniform(-1.5, 1.5, 3)

    def inside(self, point: np.ndarray, side: int) -> bool:
        idx = np.round(self.grid.to_index(point)).astype(int)
        if np.any(idx < 0) or np.any(idx >= self.grid.shape_zyx):
            return False
        return bool(self.lung[side][tuple(idx)])


def _depth(mask: np.ndarray) -> np.ndarray:
    """Distance (mm) from each lung voxel to the nearest non-lung voxel, computed on the lung's box."""
    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return out
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    padded = np.pad(mask[box], 1)
    out[box] = ndimage.distance_transform_edt(padded)[1:-1, 1:-1, 1:-1] * MAP_SPACING
    return out


def grow_tree(rng: np.random.Generator, pmap: PlacementMap, side: int) -> list[Segment]:
    """A random dichotomous vessel tree from the hilum, pruned at the pleura."""
    start = hilum(pmap.anat, side)
    segments: list[Segment] = []
    directions = [
        np.array([0.8, -0.1, side * 0.6]),
        np.array([0.3, -0.6, side * 0.7]),
        np.array([-0.2, 0.1, side * 1.0]),
        np.array([-0.9, 0.3, side * 0.4]),
        np.array([-0.6, -0.5, side * 0.5]),
    ]
    stack = [(start, d / np.linalg.norm(d), 5.0, 36.0, 1) for d in directions]
    while stack:
        p0, d, radius, length, gen = stack.pop()
        p1 = p0 + d * length
        if gen > 1 and not pmap.inside(p1, side):
            p1 = p0 + d * length * 0.5  # shorten a twig that would cross the pleura
            if not pmap.inside(p1, side):
                continue
        segments.append(Segment(p0.astype(np.float32), p1.astype(np.float32), radius, gen, side))
        if gen >= 7 or radius < 1.0:
            continue
        for sign in (-1, 1):
            turn = rng.normal(0, 0.35, 3)
            turn[2] += sign * 0.35 * side
            turn[0] += sign * 0.3
            nd = d + turn
            child = (
                p1,
                nd / np.linalg.norm(nd),
                radius * 0.77,
                length * rng.uniform(0.7, 0.88),
                gen + 1,
            )
            stack.append(child)
    return segments


def paint_tree(
    canvas: Canvas, segments: list[Segment], walls: dict[int, float] | None = None
) -> None:
    """Vessels (blood) inside the lungs, and the larger bronchi as air tubes with thin walls.

    `walls` maps a generation to a wall thickness in mm (peribronchial thickening overrides it).
    """
    lung = canvas.masks['lung_r'] | canvas.masks['lung_l']
    for seg in segments:
        canvas.capsule(seg.p0, seg.p1, seg.radius, 40.0, where=lung)
    for seg in segments:
        if seg.generation > 4:
            continue
        b0, b1, lumen = seg.bronchus()
        wall = (walls or {}).get(seg.generation, 1.0)
        canvas.capsule(b0, b1, lumen + wall, 30.0, where=lung)
        canvas.capsule(b0, b1, lumen, -990.0, where=lung)
