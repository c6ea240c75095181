"""Zero-shot prompt templates: the named pairs and the one resolver every caller uses.

A template pair is (positive, negative) with `{c}` for the class words. Inference, validation
during training, the prompt loss and the benchmarks all resolve their `templates` setting here, so
the same setting means the same prompts everywhere. The templates belong to the model side, not to
the labeler's schema: the labels do not depend on how a CLIP model is prompted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Zero-shot prompt pairs (positive, negative); the class name fills `{c}`.
ZERO_SHOT_TEMPLATES: dict[str, tuple[str, str]] = {
    'ctclip': ('{c} is present.', '{c} is not present.'),
    'there-is': ('There is {c}.', 'There is no {c}.'),
    'plain': ('{c}.', 'not {c}.'),
}

# CT-CLIP's protocol; a list of names (the `zero_shot.templates` setting's default).
DEFAULT_TEMPLATES: tuple[str, ...] = ('ctclip',)

_USAGE = 'templates must be names or [positive, negative] pairs, both with {c}'


def _is_literal_pair(item: Any) -> bool:
    return (
        isinstance(item, Sequence)
        and not isinstance(item, str)
        and len(item) == 2
        and all(isinstance(t, str) and '{c}' in t for t in item)
    )


def resolve_templates(templates: Any = None) -> list[tuple[str, str]]:
    """A name, a literal `(positive, negative)` pair, or a list of either -> (pos, neg) pairs.

    `None` gives `DEFAULT_TEMPLATES`. More than one pair is an ensemble. A two-item list of
    names is two names, not a pair.
    """
    if templates is None:
        templates = DEFAULT_TEMPLATES
    if isinstance(templates, str):
        if templates not in ZERO_SHOT_TEMPLATES:
            raise ValueError(
                f'Unknown template set {templates!r}: a zero-shot template must be one of '
                f'{sorted(ZERO_SHOT_TEMPLATES)} or a [positive, negative] pair with {{c}}'
            )
        return [tuple(ZERO_SHOT_TEMPLATES[templates])]
    if _is_literal_pair(templates):
        return [(str(templates[0]), str(templates[1]))]
    if not isinstance(templates, Sequence):
        raise ValueError(f'{_USAGE}, not {templates!r}')
    if not templates:
        raise ValueError('templates must name at least one template, not []')
    texts = all(isinstance(t, str) for t in templates)
    if len(templates) == 2 and texts and any('{c}' in t for t in templates):
        raise ValueError(f'{_USAGE}, not {tuple(templates)!r}')  # a pair missing one {c}
    pairs: list[tuple[str, str]] = []
    for item in templates:
        if not isinstance(item, str) and not _is_literal_pair(item):
            raise ValueError(f'{_USAGE}, not {item!r}')
        pairs.extend(resolve_templates(item))
    return pairs
