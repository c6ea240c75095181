"""`ctclip ground`: 3D heat maps of phrases for one CT, written over the CT's own grid."""

from __future__ import annotations

import argparse
import sys

HELP = 'heat maps of phrases for one CT (NIfTI over the original scan)'
DESCRIPTION = """Where in the volume is "a 14 mm nodule in the right lower lobe"? One heat map and
one binary mask per phrase, as NIfTI files with the source CT's affine, so they open over the
original scan in 3D Slicer or ITK-SNAP.

  ctclip ground --model runs/stage2/final --volume scan.nii.gz --text "Right lower lobe nodule." --out maps
  ctclip ground --model M --volume cache.h5::valid_1_a_1.nii.gz --text "Pleural effusion." "Emphysema." --out maps

--volume is a NIfTI file or DICOM folder (preprocessed with the model's recipe) or CACHE.h5::id.
Masks: threshold.rule=top_fraction threshold.value=0.02 (the top 2% of the body's voxels) or
threshold.rule=max_fraction threshold.value=0.8 (docs/grounding.md).
"""

DEFAULTS = {'threshold': {'rule': 'top_fraction', 'value': 0.02}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, help='exported model folder (save_pretrained)')
    parser.add_argument('--volume', required=True, help='NIfTI file, DICOM folder or CACHE.h5::id')
    parser.add_argument('--text', required=True, nargs='+', help='one or more phrases')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument(
        '--space', choices=('source', 'cache'), default='source', help='grid of the maps'
    )
    parser.add_argument('--device', default='cpu', help='cpu (default), cuda, cuda:1')


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from ctclip.config import resolve
    from ctcommon.settings import check_keys

    cfg = resolve(DEFAULTS, args.config, {}, overrides)
    try:
        check_keys(cfg, DEFAULTS)
        check_keys(cfg['threshold'], DEFAULTS['threshold'], 'threshold')
        rule, value = cfg['threshold']['rule'], float(cfg['threshold']['value'])
        from ctclip.grounding import check_threshold
        from ctclip.inference import ground, load_model

        check_threshold(rule, value)  # before the model loads
        model = load_model(args.model, args.device)
        result = ground(model, args.volume, args.text, space=args.space)
        result.save(args.out, rule, value)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f'ctclip ground: {err}', file=sys.stderr)
        return 2
    for i, phrase in enumerate(result.phrases):
        print(f'map_{i:02d}.nii.gz  mask_{i:02d}.nii.gz  {phrase}')
    print(f'{result.space} grid {list(result.geometry.shape_zyx)} (z, y, x) -> {args.out}')
    return 0
