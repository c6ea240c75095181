"""Published numbers, quoted for comparison and never recomputed.

Each source used its own protocol (threshold rule, class mapping, prompt, bootstrap), so these
rows are not strictly comparable with one another or with ours; every report prints them under
a "Published (their protocols)" heading with that warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PUBLISHED_NOTE = (
    'Published numbers as reported by their authors, each under its own protocol (prompts, '
    'class mapping, thresholds, resampling). Quoted for orientation, not recomputed here.'
)


@dataclass(frozen=True)
class PublishedResult:
    model: str
    ctrate_auroc: float | None  # zero-shot mean AUROC, %, CT-RATE validation
    radchestct_auroc: float | None  # zero-shot mean AUROC, %, RAD-ChestCT
    report_to_volume_r100: float | None = None  # %, CT-RATE
    volume_to_volume_map50: float | None = None  # %, CT-RATE
    note: str = ''


PUBLISHED: tuple[PublishedResult, ...] = (
    PublishedResult('CT-CLIP', 73.1, 62.9, report_to_volume_r100=28.7),
    PublishedResult('fVLM', 77.8, 64.4),
    PublishedResult('MedVista3D', 78.2, 71.0),
    PublishedResult('EXACT', 83.0, 72.8),
    PublishedResult(
        'Li et al. 2025 (3D ResNet-18, supervised then CLIP)',
        83.8,
        77.3,
        report_to_volume_r100=52.2,
        volume_to_volume_map50=53.7,
    ),
    PublishedResult('GreenRFM', 84.8, None),
)


def published_rows() -> list[dict]:
    return [asdict(r) for r in PUBLISHED]
