"""ctclip.prompts: one resolver for every `templates` setting (inference, training, loss, bench)."""

from __future__ import annotations

import pytest

from ctclip.prompts import DEFAULT_TEMPLATES, ZERO_SHOT_TEMPLATES, resolve_templates


def test_every_form_resolves_to_pairs():
    ctclip, there_is = ZERO_SHOT_TEMPLATES['ctclip'], ZERO_SHOT_TEMPLATES['there-is']
    assert resolve_templates(None) == resolve_templates(DEFAULT_TEMPLATES) == [ctclip]
    assert resolve_templates('ctclip') == [ctclip]
    assert resolve_templates(there_is) == [there_is]  # a literal pair, as inference takes it
    assert resolve_templates(['ctclip', 'there-is']) == [ctclip, there_is]  # two names
    assert resolve_templates(('there-is', 'plain')) == [there_is, ZERO_SHOT_TEMPLATES['plain']]
    assert resolve_templates([['{c}!', 'no {c}!'], 'ctclip']) == [('{c}!', 'no {c}!'), ctclip]


@pytest.mark.parametrize(
    ('templates', 'message'),
    [
        ('nope', "Unknown template set 'nope'.*one of \\['ctclip', 'plain', 'there-is'\\]"),
        (['ctclip', 'nope'], "Unknown template set 'nope'"),
        (('{c} yes', 'missing'), 'both with \\{c\\}'),
        ([['present', 'absent']], 'both with \\{c\\}'),
        ([], 'at least one template'),
        (3, 'templates must be names or'),
    ],
)
def test_bad_templates_fail_naming_the_problem(templates, message):
    with pytest.raises(ValueError, match=message):
        resolve_templates(templates)
