"""Placing the 18 CT-RATE findings: size, side, lobe and shape of each, in patient millimetres.

Sampling happens once per scan (so all reconstructions agree); `render.FindingPainter` draws them.
Each finding also carries the words the report will use (side, lobe, size), so text and voxels
describe the same lesion. Sizes are chosen to stay visible after resampling to 3 x 3 x 6 mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synth.anatomy import Anatomy, aorta_path, hilum
from synth.lungs import SIDES, PlacementMap, Segment


@dataclass
class Finding:
    """One present finding: its geometry (`parts`, mm) and its description for the report."""

    name: str
    certain: bool = True
    parts: list[dict] = field(default_factory=list)
    desc: dict = field(default_factory=dict)


def _sides(rng: np.random.Generator, p_bilateral: float) -> list[int]:
    if rng.random() < p_bilateral:
        return [-1, 1]
    return [int(rng.choice([-1, 1]))]


def _side_word(sides: list[int]) -> str:
    return 'bilateral' if len(set(sides)) > 1 else SIDES[sides[0]]


def _lobes(pmap: PlacementMap, parts: list[dict]) -> list[str]:
    seen = []
    for p in parts:
        word = f'{SIDES[p["side"]]} lung {pmap.lobe(p["centre"], p["side"])}'
        if word not in seen:
            seen.append(word)
    return seen


class FindingSampler:
    """Draws the geometry of each finding for one scan."""

    def __init__(
        self, rng: np.random.Generator, anat: Anatomy, pmap: PlacementMap, tree: list[Segment]
    ):
        self.rng, self.anat, self.pmap, self.tree = rng, anat, pmap, tree

    def sample(self, name: str) -> Finding:
        method = getattr(self, '_' + name.lower().replace(' ', '_'))
        return method(Finding(name))

    # --- lung parenchyma ------------------------------------------------------------------------
    def _lung_nodule(self, f: Finding) -> Finding:
        rng = self.rng
        for _ in range(int(rng.choice([1, 1, 1, 2, 2, 3, 4]))):
            side = int(rng.choice([-1, 1]))
            diameter = float(np.clip(8.0 + rng.gamma(2.0, 3.5), 8.0, 28.0))
            centre = self.pmap.pick(rng, side, min_depth=diameter / 2 + 4)
            kind = rng.choice(['solid', 'solid', 'solid', 'part-solid', 'calcified'])
            satellites = [
                centre + rng.normal(0, diameter * 0.25, 3) for _ in range(int(rng.integers(0, 3)))
            ]
            f.parts.append(
                dict(
                    centre=centre,
                    side=side,
                    diameter=diameter,
                    kind=str(kind),
                    satellites=satellites,
                )
            )
        f.parts.sort(key=lambda p: -p['diameter'])
        f.desc = dict(
            side=_side_word([p['side'] for p in f.parts]),
            lobes=_lobes(self.pmap, f.parts),
            size=round(f.parts[0]['diameter']),
            count=len(f.parts),
            kind=f.parts[0]['kind'],
        )
        return f

    def _patches(self, f: Finding, count: int, semi: tuple[float, float], **where) -> None:
        rng = self.rng
        sides = _sides(rng, 0.4)
        for i in range(count):
            side = sides[i % len(sides)]
            axes = rng.uniform(*semi, 3)
            centre = self.pmap.pick(rng, side, min_depth=6.0, **where)
            f.parts.append(
                dict(centre=centre, side=side, semi=axes, angle=float(rng.uniform(0, np.pi)))
            )
        f.desc = dict(
            side=_side_word([p['side'] for p in f.parts]), lobes=_lobes(self.pmap, f.parts)
        )

    def _lung_opacity(self, f: Finding) -> Finding:
        self._patches(f, int(self.rng.integers(1, 4)), (14.0, 30.0))
        f.desc['hu'] = float(self.rng.uniform(-560, -420))
        return f

    def _consolidation(self, f: Finding) -> Finding:
        self._patches(f, int(self.rng.integers(1, 3)), (18.0, 34.0), posterior=True, zone='lower')
        return f

    def _atelectasis(self, f: Finding) -> Finding:
        rng = self.rng
        kind = str(rng.choice(['linear', 'subsegmental', 'compressive']))
        for side in _sides(rng, 0.35):
            posterior = kind == 'compressive'
            centre = self.pmap.pick(
                rng, side, zone='lower', posterior=posterior, min_depth=5.0, max_depth=30.0
            )
            if kind == 'compressive':
                semi = np.array([rng.uniform(18, 28), rng.uniform(10, 14), rng.uniform(28, 40)])
            else:
                semi = np.array([rng.uniform(12, 18), rng.uniform(3.5, 4.5), rng.uniform(22, 34)])
            f.parts.append(
                dict(centre=centre, side=side, semi=semi, angle=float(rng.uniform(-0.4, 0.4)))
            )
        f.desc = dict(
            side=_side_word([p['side'] for p in f.parts]),
            lobes=_lobes(self.pmap, f.parts),
            kind=kind,
        )
        return f

    def _pulmonary_fibrotic_sequela(self, f: Finding) -> Finding:
        rng = self.rng
        for side in _sides(rng, 0.4):
            centre = self.pmap.pick(rng, side, zone='upper', min_depth=12.0, max_depth=35.0)
            bands = []
            for _ in range(int(rng.integers(2, 4))):
                d = rng.normal(0, 1, 3)
                d[2] = side * abs(d[2]) + side * 0.8  # towards the lateral pleura
                d /= np.linalg.norm(d)
                bands.append(centre + d * rng.uniform(30, 48))
            f.parts.append(
                dict(centre=centre, side=side, ends=bands, radius=float(rng.uniform(2.4, 3.0)))
            )
        f.desc = dict(
            side=_side_word([p['side'] for p in f.parts]), lobes=_lobes(self.pmap, f.parts)
        )
        return f

    def _pleural_effusion(self, f: Finding) -> Finding:
        rng = self.rng
        for side in _sides(rng, 0.45):
            f.parts.append(
                dict(side=side, depth=float(rng.uniform(18, 45)), hu=float(rng.uniform(6, 18)))
            )
        big = max(p['depth'] for p in f.parts)
        f.desc = dict(
            side=_side_word([p['side'] for p in f.parts]),
            size=round(big),
            severity='minimal' if big < 25 else ('moderate' if big > 35 else 'mild'),
        )
        return f

    def _emphysema(self, f: Finding) -> Finding:
        rng = self.rng
        kind = str(rng.choice(['centrilobular', 'centrilobular', 'paraseptal', 'bullous']))
        severity = int(rng.integers(0, 3))  # the report's mild / moderate / marked
        holes = []
        for side in (-1, 1):
            if kind == 'centrilobular':
                # holes per lung for a mild, moderate or marked report
                lo, hi = ((40, 70), (80, 120), (130, 180))[severity]
                for _ in range(int(rng.integers(lo, hi))):
                    holes.append(
                        (
                            self.pmap.pick(rng, side, zone='upper', min_depth=6.0),
                            float(rng.uniform(4.0, 8.0)),
                        )
                    )
            else:
                lo, hi = ((6, 12), (10, 18), (16, 26))[severity]
                count = int(rng.integers(lo, hi)) if kind == 'paraseptal' else 2 + severity
                size = (5.0, 9.0) if kind == 'paraseptal' else (12.0, 24.0)
                for _ in range(count):
                    r = float(rng.uniform(*size))
                    holes.append(
                        (
                            self.pmap.pick(
                                rng, side, zone='upper', min_depth=r * 0.6, max_depth=r + 6
                            ),
                            r,
                        )
                    )
        f.parts = [dict(centre=c, radius=r, side=int(np.sign(c[2]) or 1)) for c, r in holes]
        f.desc = dict(
            side='bilateral',
            kind=kind,
            zone='upper lobes',
            severity=('mild', 'moderate', 'marked')[severity],
        )
        return f

    def _mosaic_attenuation_pattern(self, f: Finding) -> Finding:
        rng = self.rng
        z0, z1 = self.anat.z_range
        a, b = self.anat.half_width, self.anat.half_depth
        seeds = rng.uniform([z0, -b, -a], [z1, b, a], (220, 3))
        low = rng.random(len(seeds)) < 0.5
        f.parts = [dict(seeds=seeds, low=low)]
        f.desc = dict(side='bilateral')
        return f

    def _interlobular_septal_thickening(self, f: Finding) -> Finding:
        rng = self.rng
        z0, z1 = self.anat.z_range
        a, b = self.anat.half_width, self.anat.half_depth
        volume = (z1 - z0) * 4 * a * b
        seeds = rng.uniform([z0, -b, -a], [z1, b, a], (int(volume / 19.0**3), 3))
        f.parts = [dict(seeds=seeds, band=float(rng.uniform(20, 28)), zone='lower')]
        f.desc = dict(
            side='bilateral', zone='lower lobes', kind=str(rng.choice(['smooth', 'nodular']))
        )
        return f

    # --- airways ----------------------------------------------------------------------------------
    def _peribronchial_thickening(self, f: Finding) -> Finding:
        f.parts = [dict(wall=float(self.rng.uniform(3.0, 4.0)))]
        f.desc = dict(side='bilateral')
        return f

    def _bronchiectasis(self, f: Finding) -> Finding:
        rng = self.rng
        sides = _sides(rng, 0.5)
        pool = [
            s
            for s in self.tree
            if 2 <= s.generation <= 4
            and s.side in sides
            and s.p1[0] < s.p0[0]
            and self.pmap.inside((s.p0 + s.p1) / 2, s.side)
        ]
        pool = pool or [s for s in self.tree if s.generation >= 2]
        picks = rng.choice(len(pool), size=min(len(pool), int(rng.integers(3, 7))), replace=False)
        kind = str(rng.choice(['cylindrical', 'cylindrical', 'varicose', 'cystic']))
        for i in picks:
            seg = pool[int(i)]
            b0, b1, _ = seg.bronchus()
            f.parts.append(
                dict(
                    p0=b0,
                    p1=b1,
                    lumen=float(rng.uniform(4.0, 6.5)),
                    side=seg.side,
                    centre=(b0 + b1) / 2,
                )
            )
        f.desc = dict(
            side=_side_word([p['side'] for p in f.parts]),
            lobes=_lobes(self.pmap, f.parts),
            kind=kind,
        )
        return f

    # --- heart and vessels --------------------------------------------------------------------------
    def _cardiomegaly(self, f: Finding) -> Finding:
        s = float(self.rng.uniform(1.22, 1.34))
        semi = self.anat.heart_semi * np.array([1.12, s, s])
        centre = self.anat.heart_centre + np.array([semi[0] - self.anat.heart_semi[0], 4.0, 14.0])
        f.parts = [dict(centre=centre, semi=semi)]
        f.desc = dict(severity='marked' if s > 1.3 else 'mild')
        return f

    def _pericardial_effusion(self, f: Finding) -> Finding:
        t = float(self.rng.uniform(8, 16))
        f.parts = [dict(thickness=t, hu=float(self.rng.uniform(5, 15)))]
        f.desc = dict(size=round(t))
        return f

    def _coronary_artery_wall_calcification(self, f: Finding) -> Finding:
        rng = self.rng
        arteries = list(
            rng.choice(['LAD', 'LCx', 'RCA'], size=int(rng.integers(1, 4)), replace=False)
        )
        for art in arteries:
            for _ in range(int(rng.integers(1, 3))):
                f.parts.append(
                    dict(
                        artery=str(art),
                        t0=float(rng.uniform(0.0, 0.6)),
                        length=float(rng.uniform(0.15, 0.3)),
                        radius=float(rng.uniform(2.8, 3.5)),
                        hu=float(rng.uniform(550, 1100)),
                    )
                )
        f.desc = dict(arteries=[str(a) for a in arteries])
        return f

    def _arterial_wall_calcification(self, f: Finding) -> Finding:
        rng = self.rng
        path = aorta_path(self.anat)
        for _ in range(int(rng.integers(3, 9))):
            seg = int(rng.integers(1, len(path) - 1))
            d = rng.normal(0, 1, 3)
            f.parts.append(
                dict(
                    segment=seg,
                    t=float(rng.uniform(0.1, 0.9)),
                    direction=d / np.linalg.norm(d),
                    arc=float(rng.uniform(0.5, 0.85)),
                    length=float(rng.uniform(8, 18)),
                    hu=float(rng.uniform(600, 1100)),
                )
            )
        where = sorted(
            {'aortic arch' if p['segment'] <= 2 else 'descending aorta' for p in f.parts}
        )
        f.desc = dict(locations=where)
        return f

    # --- mediastinum ------------------------------------------------------------------------------
    def _hiatal_hernia(self, f: Finding) -> Finding:
        rng, an = self.rng, self.anat
        semi = np.array([rng.uniform(18, 28), rng.uniform(15, 22), rng.uniform(18, 26)])
        centre = np.array([an.dome_z[1] + semi[0] * 0.6, an.spine_y - 38.0, rng.uniform(12, 24)])
        f.parts = [dict(centre=centre, semi=semi, air=float(rng.uniform(0.2, 0.5)))]
        f.desc = dict(size=round(2 * semi[2]), kind='sliding')
        return f

    def _lymphadenopathy(self, f: Finding) -> Finding:
        rng, an = self.rng, self.anat
        ty = an.trachea_y
        stations = {
            'right lower paratracheal': np.array([14.0, ty - 4, -(an.trachea_radius + 13)]),
            'aortopulmonary window': np.array([8.0, ty - 6, 24.0]),
            'subcarinal': np.array([-28.0, ty + 14, 0.0]),
            'prevascular': np.array([28.0, ty - 42, -4.0]),
            'right hilar': hilum(an, -1) + np.array([-6.0, -10.0, 4.0]),
            'left hilar': hilum(an, 1) + np.array([-6.0, -10.0, -4.0]),
        }
        names = rng.choice(list(stations), size=int(rng.integers(1, 4)), replace=False)
        for name in names:
            short = float(rng.uniform(14, 24))
            semi = np.array([short * rng.uniform(0.6, 0.8), short / 2, short / 2])
            f.parts.append(
                dict(
                    station=str(name),
                    centre=stations[str(name)] + rng.normal(0, 2, 3),
                    semi=semi,
                    short_axis=short,
                )
            )
        f.desc = dict(
            stations=[p['station'] for p in f.parts],
            size=round(max(p['short_axis'] for p in f.parts)),
        )
        return f

    def _medical_material(self, f: Finding) -> Finding:
        rng = self.rng
        kind = str(
            rng.choice(
                ['pacemaker', 'sternotomy wires', 'port catheter', 'surgical clips'],
                p=[0.35, 0.3, 0.2, 0.15],
            )
        )
        f.parts = [
            dict(
                kind=kind,
                side=int(rng.choice([-1, 1], p=[0.25, 0.75])),
                count=int(rng.integers(4, 8)),
                jitter=rng.normal(0, 6, (8, 3)),
            )
        ]
        f.desc = dict(kind=kind)
        return f
