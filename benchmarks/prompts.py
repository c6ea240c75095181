"""Zero-shot prompts as configuration: named or literal template pairs, ensembles, class phrasing.

`zero_shot.templates` is a list; each item is a name from `ctclip.prompts.ZERO_SHOT_TEMPLATES`
or a literal `[positive, negative]` pair with `{c}` (resolved by `ctclip.prompts.resolve_templates`,
the resolver inference and training use too). More than one item is an ensemble (the
inference API averages over the pairs). `zero_shot.class_prompts` maps a class to the words put
in `{c}` (default: the class name itself).
"""

from __future__ import annotations

from typing import Sequence

from ctclip.prompts import DEFAULT_TEMPLATES, resolve_templates

__all__ = ['DEFAULT_TEMPLATES', 'class_phrases', 'describe', 'resolve_templates']


def class_phrases(classes: Sequence[str], class_prompts: dict[str, str] | None) -> list[str]:
    """The words that fill `{c}` for each class; unknown keys are an error (a typo would be silent)."""
    class_prompts = dict(class_prompts or {})
    unknown = sorted(set(class_prompts) - set(classes))
    if unknown:
        raise ValueError(
            f'zero_shot.class_prompts names unknown classes {unknown}. Classes: {list(classes)}'
        )
    return [class_prompts.get(c, c) for c in classes]


def describe(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{'positive': p, 'negative': n} for p, n in pairs]
