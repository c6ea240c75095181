"""Which findings a scan has: CT-RATE's per-scan prevalences with clinically plausible correlations.

A Gaussian copula: each finding has a latent normal score built from a few shared factors
(atherosclerosis/age, heart failure, infection, airway disease, scarring) plus its own noise, and is
present when the score passes the quantile that gives its CT-RATE prevalence. The marginals are
exact; the factors only make findings co-occur the way they do in real cohorts.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from ctcommon.findings import FINDINGS

# Per-scan prevalence in CT-RATE's validation split (percent), from the dataset card.
PREVALENCE: dict[str, float] = {
    'Medical material': 10.1,
    'Arterial wall calcification': 27.8,
    'Cardiomegaly': 10.5,
    'Pericardial effusion': 7.0,
    'Coronary artery wall calcification': 24.8,
    'Hiatal hernia': 13.9,
    'Lymphadenopathy': 25.4,
    'Emphysema': 19.5,
    'Atelectasis': 23.3,
    'Lung nodule': 45.0,
    'Lung opacity': 38.7,
    'Pulmonary fibrotic sequela': 27.3,
    'Pleural effusion': 12.1,
    'Mosaic attenuation pattern': 8.1,
    'Peribronchial thickening': 11.2,
    'Consolidation': 19.1,
    'Bronchiectasis': 10.8,
    'Interlobular septal thickening': 7.9,
}

FACTORS = ('age', 'heart_failure', 'infection', 'airway', 'scarring')

# Loadings of each finding on the shared factors (rows need sum of squares < 1).
LOADINGS: dict[str, dict[str, float]] = {
    'Medical material': {'age': 0.4, 'heart_failure': 0.3},
    'Arterial wall calcification': {'age': 0.85},
    'Cardiomegaly': {'age': 0.3, 'heart_failure': 0.6},
    'Pericardial effusion': {'heart_failure': 0.6},
    'Coronary artery wall calcification': {'age': 0.8},
    'Hiatal hernia': {'age': 0.4},
    'Lymphadenopathy': {'infection': 0.45, 'heart_failure': 0.2},
    'Emphysema': {'age': 0.35, 'airway': 0.35},
    'Atelectasis': {'heart_failure': 0.4, 'infection': 0.35},
    'Lung nodule': {'scarring': 0.4, 'age': 0.2},
    'Lung opacity': {'infection': 0.75},
    'Pulmonary fibrotic sequela': {'scarring': 0.6, 'age': 0.3},
    'Pleural effusion': {'heart_failure': 0.7, 'infection': 0.25},
    'Mosaic attenuation pattern': {'airway': 0.55},
    'Peribronchial thickening': {'airway': 0.7},
    'Consolidation': {'infection': 0.8},
    'Bronchiectasis': {'airway': 0.6, 'scarring': 0.35},
    'Interlobular septal thickening': {'heart_failure': 0.6},
}

_THRESHOLD = {name: NormalDist().inv_cdf(1.0 - p / 100.0) for name, p in PREVALENCE.items()}
assert tuple(PREVALENCE) == FINDINGS, 'PREVALENCE must follow FINDINGS order'


def sample_presence(rng: np.random.Generator, age_factor: float | None = None) -> set[str]:
    """Draw the findings of one scan; `age_factor` (standard normal) ties calcification to age."""
    factors = dict(zip(FACTORS, rng.standard_normal(len(FACTORS)), strict=False))
    if age_factor is not None:
        factors['age'] = age_factor
    present = set()
    for name in FINDINGS:
        loads = LOADINGS[name]
        common = sum(w * factors[f] for f, w in loads.items())
        own = np.sqrt(1.0 - sum(w * w for w in loads.values()))
        if common + own * rng.standard_normal() > _THRESHOLD[name]:
            present.add(name)
    return present
