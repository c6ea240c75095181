"""One scan end to end: patient, findings, report, and each reconstruction rendered and written.

Randomness is drawn from streams keyed by (seed, patient, scan, purpose), so a scan comes out the
same whatever the worker count or the order of work, and a finding's absence does not shift the
random numbers of anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ctcommon.findings import FINDINGS
from synth import radchestct
from synth.anatomy import Anatomy, heart_geometry, sample_anatomy
from synth.findings import Finding, FindingSampler
from synth.geometry import Grid
from synth.layouts import SCANNERS
from synth.lungs import PlacementMap, grow_tree
from synth.prevalence import sample_presence
from synth.render import Scene, render
from synth.reports import INCIDENTAL, write_report

# Findings that do not resolve between a scan and its follow-up.
CHRONIC = frozenset(
    {
        'Medical material',
        'Arterial wall calcification',
        'Coronary artery wall calcification',
        'Emphysema',
        'Bronchiectasis',
        'Hiatal hernia',
        'Pulmonary fibrotic sequela',
    }
)
SPACE_TAKING = ('Cardiomegaly', 'Pericardial effusion', 'Pleural effusion')
PURPOSES = {
    'patient': 1,
    'presence': 2,
    'place': 3,
    'report': 4,
    'recon': 5,
    'texture': 6,
    'scanner': 7,
}


def stream(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


@dataclass
class ScanTask:
    """Identity of one scan in the cohort plan."""

    seed: int
    patient_no: int
    scan_no: int
    split: str
    pid: int
    n_recons: int
    small: bool
    layout: str = 'ct-rate'
    rad_id: str = ''

    @property
    def scan_name(self) -> str:
        return f'{self.split}_{self.pid}_{"abcdefgh"[self.scan_no]}'

    def volume_names(self) -> list[str]:
        if self.layout == 'rad-chestct':
            return [self.rad_id]
        return [f'{self.scan_name}_{r + 1}.nii.gz' for r in range(self.n_recons)]


@dataclass
class ScanPlan:
    task: ScanTask
    sex: str
    age: int
    anat: Anatomy
    tree: list
    findings: dict[str, Finding]
    incidental: list[str]
    report: dict[str, str]
    scanner: dict
    recons: list[dict] = field(default_factory=list)
    sentences: dict[str, str] = field(default_factory=dict)  # finding -> its report sentence

    @property
    def scene(self) -> Scene:
        return Scene(self.anat, self.findings, self.tree)


def plan_scan(task: ScanTask, present: set[str] | None = None) -> ScanPlan:
    """Everything about a scan except its voxels; `present` overrides the sampled findings."""
    prng, sex, age_factor = _patient(task.seed, task.patient_no)
    base_age = int(np.clip(round(56 + 14 * age_factor + prng.normal(0, 5)), 19, 92))
    age = base_age + 2 * task.scan_no  # a follow-up two years later, same chest
    anat = sample_anatomy(prng, sex, base_age)
    anat.fatty_liver = bool(prng.random() < 0.12)
    present = _presence(task, age_factor) if present is None else set(present)
    rng = stream(task.seed, PURPOSES['place'], task.patient_no)  # the vessel tree is the patient's
    pmap = PlacementMap(anat)
    tree = grow_tree(rng, pmap, -1) + grow_tree(rng, pmap, 1)
    sampler = FindingSampler(rng, anat, pmap, tree)
    findings = {}
    chronic = tuple(f for f in FINDINGS if f in CHRONIC)  # placed first, on the patient's own lungs
    rest = tuple(f for f in FINDINGS if f not in CHRONIC and f not in SPACE_TAKING)
    for name in chronic + SPACE_TAKING + rest:
        if name not in present:
            continue
        if name in rest and sampler.pmap is pmap and set(findings) & set(SPACE_TAKING):
            sampler.pmap = _crowded_map(anat, findings)  # place lung findings where lung remains
        # a sub-stream per finding: its geometry does not depend on which others are present
        scan_key = 0 if name in CHRONIC else task.scan_no  # chronic lesions stay where they were
        sampler.rng = stream(
            task.seed, PURPOSES['place'], task.patient_no, scan_key, 100 + FINDINGS.index(name)
        )
        f = sampler.sample(name)
        f.certain = bool(sampler.rng.random() > 0.12)
        findings[name] = f
    findings = {name: findings[name] for name in FINDINGS if name in findings}
    rrng = stream(task.seed, PURPOSES['report'], task.patient_no, task.scan_no)
    incidental = [k for k in INCIDENTAL if k != 'hepatosteatosis' and rrng.random() < 0.06]
    if anat.fatty_liver:
        incidental.insert(0, 'hepatosteatosis')
    scanner = _scanner(task, sex, age)
    recons = _recons(task, anat, scanner)
    sentences: dict[str, str] = {}
    report = write_report(findings, incidental, recons[0]['z'], rrng, sentences)
    return ScanPlan(
        task, sex, age, anat, tree, findings, incidental, report, scanner, recons, sentences
    )


def _patient(seed: int, patient_no: int) -> tuple[np.random.Generator, str, float]:
    """The patient stream after its first two draws: sex and the latent age score."""
    prng = stream(seed, PURPOSES['patient'], patient_no)
    sex = 'M' if prng.random() < 0.55 else 'F'
    return prng, sex, float(prng.standard_normal())


def scan_presence(seed: int, patient_no: int, scan_no: int) -> set[str]:
    """Findings of a scan without planning it (the cohort split needs them up front)."""
    _, _, age_factor = _patient(seed, patient_no)
    return _presence(ScanTask(seed, patient_no, scan_no, '', 0, 1, True), age_factor)


def _presence(task: ScanTask, age_factor: float) -> set[str]:
    """Findings of a scan; a follow-up scan keeps the first scan's chronic findings."""

    def draw(scan_no: int) -> set[str]:
        rng = stream(task.seed, PURPOSES['presence'], task.patient_no, scan_no)
        return sample_presence(rng, age_factor)

    present = draw(task.scan_no)
    if task.scan_no == 0:
        return present
    return (present - CHRONIC) | (draw(0) & CHRONIC)


def _crowded_map(anat: Anatomy, findings: dict[str, Finding]) -> PlacementMap:
    """The lungs left once an enlarged heart, pericardial fluid and pleural fluid take their space."""
    centre, semi = heart_geometry(anat, findings.get('Cardiomegaly'))
    peri = findings.get('Pericardial effusion')
    if peri:
        semi = semi + peri.parts[0]['thickness'] + 6.0
    pleural = findings.get('Pleural effusion')
    effusions = tuple((p['side'], p['depth'] + 6.0) for p in pleural.parts) if pleural else ()
    return PlacementMap(anat, heart=(centre, semi), effusions=effusions)


def _scanner(task: ScanTask, sex: str, age: int) -> dict:
    rng = stream(task.seed, PURPOSES['scanner'], task.patient_no, task.scan_no)
    shares = np.array([s[3] for s in SCANNERS])
    maker, model, intercept, _, kernels, z_off = SCANNERS[
        int(rng.choice(len(SCANNERS), p=shares / shares.sum()))
    ]
    year, month, day = (
        int(rng.integers(2019, 2023)),
        int(rng.integers(1, 13)),
        int(rng.integers(1, 29)),
    )
    return dict(
        manufacturer=maker,
        model=model,
        intercept=intercept,
        kernels=kernels,
        z_offset=z_off,
        sex=sex,
        age=age,
        table_height=float(rng.uniform(70, 190)),
        current=int(rng.integers(120, 440)),
        ctdi=float(rng.uniform(4, 14)),
        date=f'{year}{month:02d}{day:02d}',
        shift=rng.uniform([-8, -25, -30], [8, 25, 30]),
    )


def _recons(task: ScanTask, anat: Anatomy, scanner: dict) -> list[dict]:
    """Grids of the reconstructions: same field of view, different pixel size, slices and kernel."""
    rng = stream(task.seed, PURPOSES['recon'], task.patient_no, task.scan_no)
    fov = float(np.clip(2 * anat.half_width + rng.uniform(30, 70), 320, 440))
    z0, z1 = anat.z_range
    out = []
    for r in range(task.n_recons):
        if task.layout == 'rad-chestct':
            xy = z = radchestct.SMALL_SPACING if task.small else radchestct.FULL_SPACING
            rows = int(round(fov / xy))
        elif task.small:
            rows = int(np.clip(round(fov / rng.uniform(2.2, 2.9)), 128, 160))
            xy, z = fov / rows, float(rng.choice([4.0, 5.0, 6.0]))
        else:
            rows = 512
            xy, z = (
                fov / rows,
                float(rng.choice([1.0, 1.25, 1.5, 2.0, 3.0, 5.0] if r else [1.0, 1.5, 2.0])),
            )
        slices = int(np.floor((z1 - z0) / z)) + 1
        lung_kernel = r % 2 == 0
        origin = (
            z0,
            -fov / 2 + scanner['shift'][1] * 0.2 + 15.0,
            -fov / 2 + scanner['shift'][0] * 0.2,
        )
        grid = Grid((slices, rows, rows), (z, xy, xy), origin)
        world = (
            np.array(origin[::-1]) + scanner['shift'] + np.array([0.0, 0.0, scanner['z_offset']])
        )
        out.append(
            dict(
                grid=grid,
                xy=xy,
                z=z,
                rows=rows,
                slices=slices,
                fov=fov,
                kernel=scanner['kernels'][0 if lung_kernel else 1],
                series=f'Thorax {z:g} {"lung" if lung_kernel else "mediastinum"}',
                noise=_noise(rng, lung_kernel, z),
                ipp_xyz=[float(v) for v in world],
            )
        )
    return out


def _noise(rng: np.random.Generator, lung_kernel: bool, slice_mm: float) -> float:
    """Noise SD in HU: sharp kernels are noisier, thick slices average it down (about 1/sqrt)."""
    base = rng.uniform(30, 40) if lung_kernel else rng.uniform(11, 16)
    return float(base / np.sqrt(max(slice_mm, 1.0)))


def render_recon(plan: ScanPlan, r: int, omit: frozenset = frozenset()):
    """HU (zyx) of reconstruction `r`, per-finding voxel masks, the padding mask, tissue masks."""
    recon = plan.recons[r]
    rng = stream(plan.task.seed, PURPOSES['texture'], plan.task.patient_no, plan.task.scan_no, r)
    hu, records, tissues = render(plan.scene, recon['grid'], rng, recon['noise'], omit)
    grid = recon['grid']
    _, y, x = grid.axes()
    cy = grid.origin_zyx[1] + grid.spacing_zyx[1] * (grid.shape_zyx[1] - 1) / 2
    cx = grid.origin_zyx[2] + grid.spacing_zyx[2] * (grid.shape_zyx[2] - 1) / 2
    outside = ((y - cy) ** 2 + (x - cx) ** 2) > (recon['fov'] / 2) ** 2
    return hu, records, np.broadcast_to(outside, hu.shape), tissues
