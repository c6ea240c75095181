"""Rasterise one reconstruction: the normal chest, then every finding, then blur and noise.

The painters record the voxels each finding set, which become the truth boxes in `truth.jsonl`.
`omit` renders the same scan without chosen findings (tests compare the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from synth.anatomy import (
    HU,
    Anatomy,
    AnatomyPainter,
    aorta_path,
    effusion_level,
    heart_geometry,
)
from synth.findings import Finding
from synth.geometry import Canvas, Grid, segment_distance
from synth.lungs import Segment, paint_tree

# Coronary courses as directions in the heart's own frame (z, y, x), from origin to distal.
CORONARIES = {
    'LAD': [(0.75, -0.6, 0.25), (0.3, -0.9, 0.3), (-0.2, -0.9, 0.35), (-0.7, -0.6, 0.4)],
    'LCx': [(0.7, -0.3, 0.65), (0.45, 0.2, 0.87), (0.2, 0.6, 0.77), (0.0, 0.9, 0.45)],
    'RCA': [(0.7, -0.45, -0.55), (0.35, -0.45, -0.82), (0.0, -0.2, -0.98), (-0.45, 0.35, -0.82)],
}


@dataclass
class Scene:
    """What a reconstruction needs: the patient, the scan's findings, and the lung tree."""

    anat: Anatomy
    findings: dict[str, Finding]
    tree: list[Segment]


def _get(scene: Scene, name: str, omit: frozenset) -> Finding | None:
    return None if name in omit else scene.findings.get(name)


def render(
    scene: Scene, grid: Grid, rng: np.random.Generator, noise: float, omit: frozenset = frozenset()
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """HU volume (float32, zyx), {finding: mask of the voxels it set}, and the tissue masks."""
    cv = Canvas(grid)
    heart = _get(scene, 'Cardiomegaly', omit)
    heart_geo = (heart.parts[0]['centre'], heart.parts[0]['semi']) if heart else None
    painter = AnatomyPainter(scene.anat, cv)
    painter.paint(heart_geo)
    fp = FindingPainter(cv, scene, painter)
    records: dict[str, np.ndarray] = {}
    if heart:  # the enlargement: heart voxels that a normal heart would not fill
        normal = Canvas(grid)
        an = scene.anat
        normal.blob(
            an.heart_centre, an.heart_semi + 5.0, 0.0, an.heart_angle, record=normal.mask('h')
        )
        records['Cardiomegaly'] = cv.masks['heart'] & ~normal.masks['h']
    for name in ORDER:
        f = _get(scene, name, omit)
        if name == 'tree':
            walls = _get(scene, 'Peribronchial thickening', omit)
            rec = np.zeros(grid.shape_zyx, bool) if walls else None
            before = cv.hu.copy() if walls else None
            wall = walls.parts[0]['wall'] if walls else 1.0
            paint_tree(cv, scene.tree, {g: wall for g in range(1, 5)})
            if walls:
                rec |= (cv.hu != before) & (cv.hu > -500) & (before < -500)
                records['Peribronchial thickening'] = rec
            continue
        if f is None:
            continue
        rec = np.zeros(grid.shape_zyx, bool)
        getattr(fp, PAINTERS[name])(f, rec)
        for earlier in records.values():  # a voxel shows the finding painted last
            earlier &= ~rec
        records[name] = rec
    _texture(cv, rng, noise)
    return cv.hu, records, cv.masks


def _texture(cv: Canvas, rng: np.random.Generator, noise: float) -> None:
    """Partial-volume blur, lung texture and scanner noise."""
    lung = cv.masks['lung_r'] | cv.masks['lung_l']
    sigma = [0.5 * min(1.0, 1.5 / s) for s in cv.grid.spacing_zyx]
    cv.hu = ndimage.gaussian_filter(cv.hu, sigma=sigma)
    shape = cv.grid.shape_zyx
    half = tuple((n + 1) // 2 for n in shape)
    smooth = [max(0.5, 2.0 / s) for s in cv.grid.spacing_zyx]
    field = ndimage.gaussian_filter(rng.standard_normal(half, dtype=np.float32), sigma=smooth)
    field = field.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: shape[0], : shape[1], : shape[2]]
    field /= field.std() + 1e-6
    cv.hu[lung] += 18.0 * field[lung]
    cv.hu += noise * rng.standard_normal(shape, dtype=np.float32)


class FindingPainter:
    """One method per finding; each paints it and marks the voxels it set in `rec`."""

    def __init__(self, cv: Canvas, scene: Scene, anatomy: AnatomyPainter):
        self.cv, self.scene, self.anatomy = cv, scene, anatomy
        self.z, self.y, self.x = cv.grid.axes()

    def lung(self, side: int | None = None) -> np.ndarray:
        m = self.cv.masks
        if side is None:
            return m['lung_r'] | m['lung_l']
        return m['lung_r'] if side < 0 else m['lung_l']

    def parenchyma(self) -> np.ndarray:
        return self.lung() & (self.cv.hu < -600)

    def emphysema(self, f: Finding, rec: np.ndarray) -> None:
        lung = self.lung()
        for p in f.parts:
            r = p['radius']
            self.cv.blob(p['centre'], np.array([r, r, r]), -990.0, where=lung, record=rec)

    def mosaic(self, f: Finding, rec: np.ndarray) -> None:
        part = f.parts[0]
        lung = self.lung()
        idx = np.nonzero(lung)
        pts = np.stack([self._coord(i, a) for a, i in enumerate(idx)], axis=1)
        _, nearest = cKDTree(part['seeds']).query(pts)
        values = np.where(part['low'][nearest], -935.0, -765.0)
        self.cv.hu[idx] = values
        rec[idx] = True

    def septal(self, f: Finding, rec: np.ndarray) -> None:
        part = f.parts[0]
        lung = self.lung()
        depth = ndimage.distance_transform_edt(lung, sampling=self.cv.grid.spacing_zyx)
        zs = self.z[:, 0, 0]
        lung_z = zs[lung.any(axis=(1, 2))]
        z_cut = lung_z.min() + 0.65 * (lung_z.max() - lung_z.min()) if lung_z.size else 0.0
        band = lung & (depth <= part['band']) & (self.z <= z_cut)
        idx = np.nonzero(band)
        pts = np.stack([self._coord(i, a) for a, i in enumerate(idx)], axis=1)
        dist, _ = cKDTree(part['seeds']).query(pts, k=2)
        on_septum = (dist[:, 1] - dist[:, 0]) < 3.2
        sel = tuple(i[on_septum] for i in idx)
        self.cv.hu[sel] = -150.0
        rec[sel] = True

    def _coord(self, index: np.ndarray, axis: int) -> np.ndarray:
        g = self.cv.grid
        return g.origin_zyx[axis] + g.spacing_zyx[axis] * index.astype(np.float32)

    def opacity(self, f: Finding, rec: np.ndarray) -> None:
        paren = self.parenchyma()
        for p in f.parts:
            self.cv.blob(p['centre'], p['semi'], f.desc['hu'], p['angle'], where=paren, record=rec)

    def consolidation(self, f: Finding, rec: np.ndarray) -> None:
        for p in f.parts:
            lung = self.lung(p['side'])
            self.cv.blob(p['centre'], p['semi'], 35.0, p['angle'], where=lung, record=rec)
            c, s = p['centre'], p['semi']
            for dx in (-0.3, 0.3):  # air bronchograms
                a = c + np.array([s[0] * 0.6, 0.0, dx * s[2]])
                b = c + np.array([-s[0] * 0.6, s[1] * 0.3, dx * s[2] * 1.5])
                self.cv.capsule(a, b, 2.2, -900.0, where=rec)

    def atelectasis(self, f: Finding, rec: np.ndarray) -> None:
        for p in f.parts:
            self.cv.blob(
                p['centre'], p['semi'], 40.0, p['angle'], where=self.lung(p['side']), record=rec
            )

    def fibrosis(self, f: Finding, rec: np.ndarray) -> None:
        for p in f.parts:
            lung = self.lung(p['side'])
            for end in p['ends']:
                self.cv.capsule(p['centre'], end, p['radius'], 0.0, where=lung, record=rec)

    def bronchiectasis(self, f: Finding, rec: np.ndarray) -> None:
        lung = self.lung()
        for p in f.parts:
            self.cv.capsule(p['p0'], p['p1'], p['lumen'] + 2.0, 35.0, where=lung, record=rec)
            self.cv.capsule(p['p0'], p['p1'], p['lumen'], -995.0, where=lung)

    def nodule(self, f: Finding, rec: np.ndarray) -> None:
        for p in f.parts:
            r = p['diameter'] / 2
            hu = {'solid': 40.0, 'part-solid': 20.0, 'calcified': 260.0}[p['kind']]
            where = self.lung(p['side'])
            self.cv.blob(p['centre'], np.array([r, r, r]), hu, where=where, record=rec)
            for s in p['satellites']:
                self.cv.blob(s, np.array([r, r, r]) * 0.6, hu, where=where, record=rec)
            if p['kind'] == 'part-solid':
                self.cv.blob(
                    p['centre'], np.array([r, r, r]) * 1.5, -450.0, where=where & ~rec, record=rec
                )

    def pleural_effusion(self, f: Finding, rec: np.ndarray) -> None:
        for p in f.parts:
            side = p['side']
            fluid = self.lung(side) & (
                self.y >= effusion_level(self.scene.anat, side, p['depth'], self.z)
            )
            self.cv.hu[fluid] = p['hu']
            rec |= fluid
            self.anatomy.carve(fluid)

    def pericardial(self, f: Finding, rec: np.ndarray) -> None:
        an = self.scene.anat
        centre, semi = heart_geometry(an, _get(self.scene, 'Cardiomegaly', frozenset()))
        t = f.parts[0]['thickness']
        outer_c = centre + np.array([-t * 0.2, t * 0.25, 0.0])
        self.cv.blob(outer_c, semi + 5.0 + t + 2.0, HU['muscle'], an.heart_angle, record=rec)
        self.cv.blob(outer_c, semi + 5.0 + t, f.parts[0]['hu'], an.heart_angle)
        self.cv.blob(centre, semi + 4.0, HU['fat'], an.heart_angle)
        inner = np.zeros_like(rec)
        self.cv.blob(centre, semi + 4.0, HU['fat'], an.heart_angle, record=inner)
        self.cv.blob(centre, semi, HU['blood'], an.heart_angle)
        rec &= ~inner
        self.anatomy.carve(rec)

    def coronary(self, f: Finding, rec: np.ndarray) -> None:
        an = self.scene.anat
        centre, semi = heart_geometry(an, _get(self.scene, 'Cardiomegaly', frozenset()))
        c, s = np.cos(an.heart_angle), np.sin(an.heart_angle)
        for p in f.parts:
            dirs = np.array(CORONARIES[p['artery']], float)
            ts = np.linspace(p['t0'], min(1.0, p['t0'] + p['length']), 5)
            for t0, t1 in zip(ts[:-1], ts[1:], strict=False):
                pts = []
                for t in (t0, t1):
                    k = t * (len(dirs) - 1)
                    i = min(int(k), len(dirs) - 2)
                    d = dirs[i] + (k - i) * (dirs[i + 1] - dirs[i])
                    local = d / np.linalg.norm(d) * (semi + 4.0)
                    pts.append(
                        centre
                        + np.array(
                            [local[0], s * local[2] + c * local[1], c * local[2] - s * local[1]]
                        )
                    )
                self.cv.capsule(pts[0], pts[1], p['radius'], p['hu'], record=rec)

    def aortic(self, f: Finding, rec: np.ndarray) -> None:
        an = self.scene.anat
        path = aorta_path(an)
        for p in f.parts:
            i = p['segment']
            a, b = path[i], path[i + 1]
            r = an.aorta_radius[0] if i < 2 else an.aorta_radius[1]
            axis = (b - a) / np.linalg.norm(b - a)
            mid = a + p['t'] * (b - a)
            half = p['length'] / 2
            win = self.cv.grid.window(mid - half - r - 4, mid + half + r + 4)
            if win is None:
                continue
            loc = self.cv.grid.local_axes(win)
            dist, _ = segment_distance(loc, mid - axis * half, mid + axis * half)
            offset = np.stack(np.broadcast_arrays(*(loc[k] - mid[k] for k in range(3))), axis=-1)
            radial = offset - (offset @ axis)[..., None] * axis
            norm = np.linalg.norm(radial, axis=-1) + 1e-6
            d = p['direction'] - (p['direction'] @ axis) * axis
            d /= np.linalg.norm(d) + 1e-6
            facing = (radial @ d) / norm > np.cos(p['arc'] * np.pi / 2)
            shell = (dist >= r - 1.5) & (dist <= r + 2.5) & facing
            self.cv.hu[win][shell] = p['hu']
            rec[win] |= shell

    def hernia(self, f: Finding, rec: np.ndarray) -> None:
        p = f.parts[0]
        c, s = p['centre'], p['semi']
        self.cv.blob(c, s + 3.0, HU['muscle'], record=rec)
        inside = np.zeros_like(rec)
        self.cv.blob(c, s, 20.0, record=inside)
        air = inside & (self.y < c[1] - s[1] * (1 - 2 * p['air']))
        self.cv.hu[air] = HU['air']
        self.anatomy.carve(rec)

    def nodes(self, f: Finding, rec: np.ndarray) -> None:
        where = self.cv.hu > -950  # never fill the airway lumen
        solid = where & ~self.lung()
        for p in f.parts:
            # nodes sit in fat; the fat rim is context, not the finding, so the mask skips it
            self.cv.blob(p['centre'], p['semi'] + 3.0, HU['fat'], where=solid)
            self.cv.blob(p['centre'], p['semi'], 38.0, where=where, record=rec)
        self.anatomy.carve(rec)

    def material(self, f: Finding, rec: np.ndarray) -> None:
        from synth.devices import paint_device

        paint_device(self.cv, self.scene.anat, f.parts[0], rec)
        self.anatomy.carve(rec)


# Painting order: parenchyma first (vessels cross it), then focal lesions, then fluid and metal.
ORDER = (
    'Mosaic attenuation pattern',
    'Emphysema',
    'tree',
    'Interlobular septal thickening',
    'Lung opacity',
    'Consolidation',
    'Pulmonary fibrotic sequela',
    'Bronchiectasis',
    'Lung nodule',
    'Pleural effusion',
    'Atelectasis',
    'Pericardial effusion',
    'Hiatal hernia',
    'Lymphadenopathy',
    'Coronary artery wall calcification',
    'Arterial wall calcification',
    'Medical material',
)
PAINTERS = {
    'Mosaic attenuation pattern': 'mosaic',
    'Emphysema': 'emphysema',
    'Interlobular septal thickening': 'septal',
    'Lung opacity': 'opacity',
    'Consolidation': 'consolidation',
    'Atelectasis': 'atelectasis',
    'Pulmonary fibrotic sequela': 'fibrosis',
    'Bronchiectasis': 'bronchiectasis',
    'Lung nodule': 'nodule',
    'Pleural effusion': 'pleural_effusion',
    'Pericardial effusion': 'pericardial',
    'Hiatal hernia': 'hernia',
    'Lymphadenopathy': 'nodes',
    'Coronary artery wall calcification': 'coronary',
    'Arterial wall calcification': 'aortic',
    'Medical material': 'material',
}
