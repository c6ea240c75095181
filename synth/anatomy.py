"""A parametric chest: body wall, skeleton, mediastinum, lungs with vessels and airways, upper abdomen.

`Anatomy` holds one patient's shape parameters in millimetres (patient frame of `geometry`). The
painters rasterise it onto any grid, so findings placed in millimetres land on the same structure in
every reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synth.geometry import Canvas

# HU of the tissues, in one place (tests check the rendered volumes against these).
HU = {
    'air': -1000.0,
    'fat': -100.0,
    'muscle': 45.0,
    'blood': 40.0,
    'lung': -850.0,
    'cancellous': 420.0,
    'cortical': 950.0,
    'liver': 60.0,
    'fatty_liver': 5.0,
    'spleen': 48.0,
    'stomach': 30.0,
    'csf': 12.0,
    'cartilage': 110.0,
    'table': -350.0,
    'table_shell': 250.0,
}


@dataclass
class Anatomy:
    """One patient's chest in millimetres. z = 0 at the carina; the body axis is x = y = 0."""

    half_width: float
    half_depth: float
    fat: float
    muscle: float
    apex_z: float
    dome_z: tuple[float, float]  # right, left
    heart_centre: np.ndarray
    heart_semi: np.ndarray
    heart_angle: float
    aorta_radius: tuple[float, float]  # ascending, descending
    trachea_radius: float
    fatty_liver: bool = False
    breasts: bool = False
    segments: list = field(default_factory=list)  # (p0, p1, radius, generation, side) lung vessels

    @property
    def cavity(self) -> tuple[float, float, float]:
        """Semi-axes (x, y) of the thoracic cavity and its forward shift (the back wall is thicker)."""
        wall = self.fat + self.muscle
        return self.half_width - wall, self.half_depth - 0.6 * wall - 10.0, -6.0

    @property
    def spine_y(self) -> float:
        """y of the vertebral body centre (it bulges into the back of the cavity)."""
        a_c, b_c, shift = self.cavity
        return shift + b_c - 14.0

    @property
    def trachea_y(self) -> float:
        return self.spine_y - 42.0

    @property
    def z_range(self) -> tuple[float, float]:
        """Scan range: lung apices to below the costophrenic recesses."""
        return min(self.dome_z) - 85.0, self.apex_z + 25.0


def sample_anatomy(rng: np.random.Generator, sex: str, age: int) -> Anatomy:
    """Draw a patient's chest; men are a little larger, and the aorta widens with age."""
    scale = rng.normal(1.04 if sex == 'M' else 0.96, 0.05)
    half_width = float(np.clip(155 * scale, 130, 178))
    half_depth = float(np.clip(half_width * rng.uniform(0.66, 0.78), 90, 135))
    dome_right = float(rng.uniform(-120, -95))
    heart_semi = np.array([rng.uniform(40, 46), rng.uniform(42, 50), rng.uniform(52, 60)]) * scale
    heart_z = dome_right + heart_semi[0] - 12
    heart_centre = np.array([heart_z, -half_depth * 0.3, rng.uniform(20, 30)])
    age_widening = max(0.0, (age - 40) * 0.06)
    return Anatomy(
        half_width=half_width,
        half_depth=half_depth,
        fat=float(rng.uniform(8, 28)),
        muscle=float(rng.uniform(10, 15)),
        apex_z=float(rng.uniform(95, 120)),
        dome_z=(dome_right, dome_right - float(rng.uniform(8, 20))),
        heart_centre=heart_centre,
        heart_semi=heart_semi,
        heart_angle=float(rng.uniform(0.3, 0.55)),
        aorta_radius=(
            float(rng.uniform(14, 16) + age_widening),
            float(rng.uniform(10.5, 12.5) + age_widening / 2),
        ),
        trachea_radius=float(rng.uniform(8, 10)),
        breasts=sex == 'F',
    )


def heart_geometry(anat: Anatomy, cardiomegaly=None) -> tuple[np.ndarray, np.ndarray]:
    """Centre and semi-axes of the heart as rendered: the enlarged one when Cardiomegaly is drawn.

    `cardiomegaly` is that Finding (its first part holds 'centre' and 'semi') or None.
    """
    if cardiomegaly:
        return cardiomegaly.parts[0]['centre'], cardiomegaly.parts[0]['semi']
    return anat.heart_centre, anat.heart_semi


def aorta_path(anat: Anatomy) -> list[np.ndarray]:
    """Centre line (zyx mm) of the ascending aorta, the arch and the descending aorta."""
    hz, hy, _ = anat.heart_centre
    top = hz + anat.heart_semi[0] * 0.55
    spine_front = anat.spine_y - 20.0
    z_low = anat.z_range[0]
    pts = [
        (top - 10, hy + 12, -12),
        (25, hy + 5, -14),
        (40, anat.trachea_y - 15, -4),
        (42, anat.trachea_y + 8, 10),
        (30, spine_front - 6, 20),
        (-40, spine_front - 4, 22),
        (z_low, spine_front, 12),
    ]
    return [np.array(p, np.float32) for p in pts]


def effusion_level(anat: Anatomy, side: int, depth: float, z: np.ndarray) -> np.ndarray:
    """y above which a layering pleural effusion of `depth` mm fills the lung (supine: posterior).

    `depth` is the fluid's anteroposterior depth at the level of the diaphragm dome, where effusions
    are measured; it fills the recess below and thins out over about 2.5 x `depth` mm above.
    """
    _, b_c, shift = anat.cavity
    dome = anat.dome_z[0 if side < 0 else 1]
    return shift + b_c - depth + 0.4 * (z - dome)


def hilum(anat: Anatomy, side: int) -> np.ndarray:
    """Hilum position of the right (-1) or left (+1) lung."""
    return np.array([-22.0 if side < 0 else -30.0, anat.trachea_y + 12, side * 52.0], np.float32)


class AnatomyPainter:
    """Paints the normal chest onto a canvas and leaves masks (body, cavity, lung_r, lung_l, ...)."""

    def __init__(self, anat: Anatomy, canvas: Canvas):
        self.anat = anat
        self.cv = canvas
        self.z, self.y, self.x = canvas.grid.axes()

    def paint(
        self, heart: tuple[np.ndarray, np.ndarray] | None = None, skeleton: bool = True
    ) -> None:
        self.body()
        if skeleton:
            self.skeleton()
        else:
            self.cv.masks['bone'] = self.cv.masks['spine'] = np.zeros(self.cv.grid.shape_zyx, bool)
        self.lungs()
        self.abdomen()
        self.mediastinum(heart)

    # --- body wall ---------------------------------------------------------------------------
    def _ellipse(self, a: float, b: float, shift: float = 0.0, power: float = 2.0) -> np.ndarray:
        return (np.abs(self.x / a) ** power + np.abs((self.y - shift) / b) ** power) <= 1.0

    def body(self) -> None:
        an, cv = self.anat, self.cv
        body2d = self._ellipse(an.half_width, an.half_depth, power=2.2)
        muscle2d = self._ellipse(an.half_width - an.fat, an.half_depth - an.fat, power=2.2)
        a_c, b_c, shift = an.cavity
        cavity2d = self._ellipse(a_c, b_c, shift)
        full = np.ones(cv.grid.shape_zyx, bool)
        cv.masks['body'] = full & body2d
        cv.masks['cavity'] = full & cavity2d
        cv.hu[full & body2d] = HU['fat']
        cv.hu[full & muscle2d] = HU['muscle']
        cv.hu[full & cavity2d] = HU['fat']  # mediastinal fat; lungs and organs are painted over it
        if an.breasts:
            superficial = full & ~muscle2d  # subcutaneous fat and the air in front of the chest
            for side in (-1, 1):
                centre = np.array(
                    [an.heart_centre[0] + 30, -an.half_depth + 14, side * 0.42 * an.half_width]
                )
                semi = np.array([42.0, 30.0, 52.0])
                cv.blob(centre, semi, HU['fat'], where=superficial, record=cv.masks['body'])
                cv.blob(centre - [0, 8, 0], semi * 0.5, 25.0, where=superficial)  # glandular tissue
        table_y = an.half_depth + 8.0
        slab = (self.y >= table_y) & (self.y <= table_y + 14) & (np.abs(self.x) < 230)
        shell = slab & ((self.y <= table_y + 2) | (self.y >= table_y + 12))
        cv.hu[full & slab] = HU['table']
        cv.hu[full & shell] = HU['table_shell']

    def skeleton(self) -> None:
        an, cv = self.anat, self.cv
        a_c, b_c, shift = an.cavity
        vb_r = 17.0
        in_disc = np.mod(self.z - 3.0, 27.0) < 5.0
        body_col = (self.x**2 + (self.y - an.spine_y) ** 2) <= vb_r**2
        canal_y = an.spine_y + vb_r + 9
        canal = (self.x**2 + (self.y - canal_y) ** 2) <= 8.0**2
        arch = ((self.x**2 + (self.y - canal_y) ** 2) <= 14.0**2) & ~canal
        spinous = (np.abs(self.x) <= 4) & (self.y > canal_y) & (self.y < canal_y + 30)
        full = np.ones(cv.grid.shape_zyx, bool)
        cv.hu[full & body_col] = HU['cancellous']
        ring = body_col & ((self.x**2 + (self.y - an.spine_y) ** 2) >= (vb_r - 2.5) ** 2)
        cv.hu[full & ring] = HU['cortical']
        cv.hu[in_disc & body_col] = 75.0
        cv.hu[full & (arch | spinous)] = HU['cortical'] - 200
        cv.hu[full & canal] = HU['csf']
        cv.masks['bone'] = (full & (body_col | arch | spinous)) & ~(in_disc & body_col)
        cv.masks['spine'] = full & (body_col | arch | spinous | canal)
        sternum = (
            (np.abs(self.x) <= 16) & (self.y >= shift - b_c - 12) & (self.y <= shift - b_c + 2)
        )
        low = an.heart_centre[0] - an.heart_semi[0] * 0.8
        st = sternum & (self.z >= low) & (self.z <= an.apex_z - 40)
        cv.hu[st] = HU['cancellous']
        cv.masks['bone'] |= st
        self._ribs(a_c + 6, b_c + 6, shift)
        self._scapulae(a_c + 6, b_c + 6, shift)

    def _scapulae(self, a: float, b: float, shift: float) -> None:
        """Two thin bone plates behind the upper ribs."""
        an, cv = self.anat, self.cv
        rn = np.sqrt((self.x / a) ** 2 + ((self.y - shift) / b) ** 2)
        radial = (rn - 1.0) * (0.5 * (a + b))
        theta = np.arctan2(np.abs(self.x) / a, (self.y - shift) / b)
        height = (self.z <= an.apex_z + 5) & (self.z >= an.apex_z - 120 + 60 * (theta - 0.45))
        plate = height & (theta >= 0.45) & (theta <= 1.15) & (radial >= 10.0) & (radial <= 14.0)
        plate &= cv.masks['body']
        cv.hu[plate] = HU['cortical'] - 250
        cv.masks['bone'] |= plate

    def _ribs(self, a: float, b: float, shift: float) -> None:
        """Twelve rib pairs, sloping down towards the front, drawn analytically in one pass."""
        an, cv = self.anat, self.cv
        rn = np.sqrt((self.x / a) ** 2 + ((self.y - shift) / b) ** 2)
        radial = (rn - 1.0) * (0.5 * (a + b))
        theta = np.arctan2(
            np.abs(self.x) / a, (self.y - shift) / b
        )  # 0 at the back, pi at the front
        top = an.apex_z - 5.0
        along = top - 22.0 * (theta - 0.35) - self.z  # 0 on rib 0, 24 on rib 1, ...
        index = np.round(along / 24.0)
        dz = along - 24.0 * index
        valid = (
            (theta >= 0.35) & (theta <= 2.4) & (index >= 0) & (index < 12) & (np.abs(radial) < 5.0)
        )
        d2 = radial**2 + dz**2
        cortex = valid & (d2 <= 4.5**2)
        cv.hu[cortex] = HU['cortical']
        cv.hu[valid & (d2 <= 2.5**2)] = HU['cancellous']
        cv.masks['bone'] |= cortex

    # --- lungs ---------------------------------------------------------------------------------
    def lung_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Right and left lung fields before the mediastinal organs are carved out."""
        an = self.anat
        a_c, b_c, shift = an.cavity
        inner = self._ellipse(a_c - 3, b_c - 3, shift)
        out = []
        for side, dome in ((-1, an.dome_z[0]), (1, an.dome_z[1])):
            xs = side * a_c * 0.5
            r2 = (self.x - xs) ** 2 + (self.y - shift) ** 2
            below_apex = self.z <= an.apex_z - r2 / 70.0
            r2d = (self.x - xs) ** 2 + (self.y - shift + 25) ** 2
            above_dome = self.z >= dome - r2d / 90.0
            medial = side * self.x > 18.0 + 6.0 * (self.y < an.trachea_y)
            spine = (self.x**2 + (self.y - an.spine_y) ** 2) > 30.0**2
            out.append(inner & below_apex & above_dome & medial & spine)
        return out[0], out[1]

    def lungs(self) -> None:
        cv, an = self.cv, self.anat
        right, left = self.lung_masks()
        lung = right | left
        a_c, b_c, shift = an.cavity
        gravity = 45.0 * (self.y - shift) / b_c  # dependent lung is denser
        cv.hu[lung] = (HU['lung'] + gravity + np.zeros_like(cv.hu))[lung]
        cv.masks['lung_r'], cv.masks['lung_l'] = right, left

    def carve(self, mask: np.ndarray) -> None:
        """Remove voxels from both lung masks (an organ was painted over them)."""
        for key in ('lung_r', 'lung_l'):
            self.cv.masks[key] &= ~mask

    # --- mediastinum ---------------------------------------------------------------------------
    def mediastinum(self, heart: tuple[np.ndarray, np.ndarray] | None) -> None:
        an, cv = self.anat, self.cv
        organ = cv.mask('mediastinum')
        centre, semi = heart if heart is not None else (an.heart_centre, an.heart_semi)
        cv.blob(centre, semi + 5.0, HU['fat'], an.heart_angle, record=organ)  # epicardial fat
        cv.masks['heart'] = np.zeros(cv.grid.shape_zyx, bool)
        cv.blob(centre, semi, HU['blood'], an.heart_angle, record=cv.masks['heart'])
        path = aorta_path(an)
        for i, (p0, p1) in enumerate(zip(path[:-1], path[1:], strict=False)):
            r = an.aorta_radius[0] if i < 2 else an.aorta_radius[1]
            cv.capsule(p0, p1, r + 4, HU['fat'], record=organ)
            cv.capsule(p0, p1, r, HU['blood'], record=cv.mask('aorta'))
        self._vessels_and_airways(organ)
        self.carve(organ)

    def _vessels_and_airways(self, organ: np.ndarray) -> None:
        an, cv = self.anat, self.cv
        hz, hy, hx = an.heart_centre
        top = hz + an.heart_semi[0] * 0.6
        z_top = an.z_range[1] + 10
        trunk0 = np.array([top - 5, hy - 10, 12.0])
        trunk1 = np.array([-2.0, an.trachea_y - 18, 26.0])
        cv.capsule(trunk0, trunk1, 13, HU['blood'], record=organ)
        for side in (-1, 1):
            cv.capsule(trunk1, hilum(an, side), 10, HU['blood'], record=organ)
        cv.capsule([z_top, hy - 5, -32], [top, hy + 5, -30], 10, HU['blood'], record=organ)  # SVC
        ty = an.trachea_y
        carina = np.array([0.0, ty, 0.0])
        esoph = [np.array([z_top, ty + 18, 4.0]), np.array([min(an.dome_z) - 10, ty + 30, 22.0])]
        cv.capsule(esoph[0], esoph[1], 8, HU['muscle'], record=organ)
        cv.capsule([z_top, ty, 0], carina, an.trachea_radius + 2.5, HU['muscle'], record=organ)
        cv.capsule([z_top, ty, 0], carina, an.trachea_radius, HU['air'], record=organ)
        for side in (-1, 1):
            end = hilum(an, side) + np.array([0.0, 6.0, -side * 6.0])
            cv.capsule(carina, end, 8.5, HU['muscle'], record=organ)
            cv.capsule(carina, end, 6.5, HU['air'], record=organ)

    # --- upper abdomen -----------------------------------------------------------------------------
    def abdomen(self) -> None:
        an, cv = self.anat, self.cv
        right, left = self.lung_masks()
        a_c, b_c, shift = an.cavity
        cavity = cv.masks['cavity']
        below = np.zeros(cv.grid.shape_zyx, bool)
        for side, dome in ((-1, an.dome_z[0]), (1, an.dome_z[1])):
            xs = side * a_c * 0.5
            r2d = (self.x - xs) ** 2 + (self.y - shift + 25) ** 2
            surface = dome - r2d / 90.0
            half = side * self.x >= -10 * (side > 0)
            cv.hu[(self.z < surface) & half & cavity & ~cv.masks['spine']] = HU[
                'muscle'
            ]  # diaphragm
            below |= (self.z < surface - 4.0) & half & cavity
        below &= ~cv.masks['spine']
        liver = below & (self.x < 25)
        cv.hu[liver] = HU['fatty_liver'] if an.fatty_liver else HU['liver']
        stomach = below & (self.x >= 25) & (self.y < shift + b_c * 0.2)
        cv.hu[stomach] = HU['stomach']
        spleen = below & (self.x >= 25) & (self.y >= shift + b_c * 0.2)
        cv.hu[spleen] = HU['spleen']
        bubble = np.array([an.dome_z[1] - 30, shift - b_c * 0.3, a_c * 0.45])
        cv.blob(bubble, np.array([14.0, 18.0, 22.0]), HU['air'], where=stomach)
        cv.masks['liver'] = liver
        self.carve(below)
