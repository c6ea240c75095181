"""The 18 CT-RATE findings, once: the labeler, the synthetic cohort, the model and the benchmarks
all index label columns by this tuple, so it lives at the bottom of the import graph."""

from __future__ import annotations

# Spelled and ordered exactly as CT-RATE's multi_abnormality_labels CSVs.
FINDINGS: tuple[str, ...] = (
    'Medical material',
    'Arterial wall calcification',
    'Cardiomegaly',
    'Pericardial effusion',
    'Coronary artery wall calcification',
    'Hiatal hernia',
    'Lymphadenopathy',
    'Emphysema',
    'Atelectasis',
    'Lung nodule',
    'Lung opacity',
    'Pulmonary fibrotic sequela',
    'Pleural effusion',
    'Mosaic attenuation pattern',
    'Peribronchial thickening',
    'Consolidation',
    'Bronchiectasis',
    'Interlobular septal thickening',
)
