"""Prompt templates as configuration."""

from __future__ import annotations

import pytest

from benchmarks.prompts import class_phrases, resolve_templates
from ctclip.prompts import ZERO_SHOT_TEMPLATES


def test_names_pairs_and_ensembles():
    assert resolve_templates(None) == [ZERO_SHOT_TEMPLATES['ctclip']]
    assert resolve_templates('plain') == [ZERO_SHOT_TEMPLATES['plain']]
    assert resolve_templates(['{c} seen.', 'no {c} seen.']) == [('{c} seen.', 'no {c} seen.')]
    ens = resolve_templates(['ctclip', 'there-is', ['{c}!', 'no {c}!']])
    assert len(ens) == 3 and ens[1] == ZERO_SHOT_TEMPLATES['there-is']


def test_errors():
    with pytest.raises(ValueError, match="one of \\['ctclip', 'plain', 'there-is'\\]"):
        resolve_templates(['ctclip-v2'])
    with pytest.raises(ValueError, match='both with \\{c\\}'):
        resolve_templates([['present', 'absent']])
    with pytest.raises(ValueError, match="unknown classes \\['Nodule'\\]"):
        class_phrases(['Lung nodule'], {'Nodule': 'nodule'})
    assert class_phrases(['Lung nodule', 'Emphysema'], {'Lung nodule': 'a lung nodule'}) == [
        'a lung nodule',
        'Emphysema',
    ]
