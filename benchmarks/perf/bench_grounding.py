"""Speed of phrase grounding: one volume and the 18 findings' phrases, at the demo's grid.

Target (issue 17): under 2 s on the CPU for one synthetic volume (the demo's `--small` cohort,
preprocessed on the fly with the `small` recipe) and 18 phrases, with the demo's model
architecture (resnet3d-tiny-minilm). The baseline is the naive loop: one `ground` call per phrase
(the image encoder and the inverse resample run once per phrase).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.perf.common import Row, timed

TARGET_S = 2.0


def _volume(root: Path) -> Path:
    from synth import generate_cohort
    from synth.layouts import ctrate_paths

    generate_cohort(root, n=1, seed=0, small=True, workers=1, progress=False)
    name = sorted(p.name for p in (root / 'dataset' / 'train_fixed').rglob('*.nii.gz'))[0]
    return ctrate_paths(root, name)[1]


def run(quick: bool = False) -> list[Row]:
    import torch

    from ctclip.factory import create_model
    from ctclip.inference import embed_texts, ground
    from ctcommon.findings import FINDINGS
    from preprocessing.recipes import get_recipe

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = create_model('resnet3d-tiny-minilm').eval()
    model.config['recipe'] = get_recipe('small').to_dict()
    phrases = [f'{name}.' for name in FINDINGS]
    with tempfile.TemporaryDirectory() as tmp:
        path = _volume(Path(tmp) / 'cohort')
        ours = timed(lambda: ground(model, path, phrases), repeat=2 if quick else 3)
        result = ground(model, path, phrases)
        text = embed_texts(model, phrases)
        n_base = 3 if quick else 6

        def naive() -> None:
            for i in range(n_base):
                ground(model, path, phrases[i : i + 1], text_embeddings=text[i : i + 1])

        base = timed(naive, repeat=1) * len(phrases) / n_base
    split = ', '.join(f'{k} {v:.2f} s' for k, v in result.timings.items())
    grid = 'x'.join(map(str, result.geometry.shape_zyx))
    return [
        Row(
            'grounding',
            f'ground(): 1 volume ({grid} source grid) x {len(phrases)} phrases',
            ours,
            's',
            base,
            'one ground() per phrase',
            base / ours,
            notes=f'one call: {split} (read = preprocess on the fly); baseline timed on '
            f'{n_base} phrases, scaled to {len(phrases)}',
        ),
        Row(
            'grounding',
            f'ground(): 1 volume x {len(phrases)} phrases, against the issue target',
            ours,
            's',
            TARGET_S,
            'issue target',
            TARGET_S / ours,
            target='< 2 s',
            target_ratio=1.0,
        ),
    ]
