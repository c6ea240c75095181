"""Zero-shot prompts as configuration: named or literal template pairs, ensembles, class phrasing.

`zero_shot.templates` is a list; each item is a name from `llm_labeling.schema.ZERO_SHOT_TEMPLATES`
or a literal `[positive, negative]` pair with `{c}`. More than one item is an ensemble (the
inference API averages over the pairs). `zero_shot.class_prompts` maps a class to the words put
in `{c}` (default: the class name itself).
"""

from __future__ import annotations

from typing import Any, Sequence

from llm_labeling.schema import ZERO_SHOT_TEMPLATES

DEFAULT_TEMPLATES = ('ctclip',)


def resolve_templates(items: Any) -> list[tuple[str, str]]:
    """Template names or literal pairs -> a list of (positive, negative) pairs, validated."""
    if items is None:
        items = DEFAULT_TEMPLATES
    if isinstance(items, str) or (
        isinstance(items, (list, tuple))
        and len(items) == 2
        and all(isinstance(i, str) and '{c}' in i for i in items)
    ):
        items = [items]
    pairs = []
    for item in items:
        if isinstance(item, str):
            if item not in ZERO_SHOT_TEMPLATES:
                raise ValueError(
                    f'zero-shot template must be one of {sorted(ZERO_SHOT_TEMPLATES)} or a '
                    f'[positive, negative] pair with {{c}}, not {item!r}'
                )
            pairs.append(tuple(ZERO_SHOT_TEMPLATES[item]))
        elif (
            isinstance(item, (list, tuple))
            and len(item) == 2
            and all('{c}' in str(t) for t in item)
        ):
            pairs.append((str(item[0]), str(item[1])))
        else:
            raise ValueError(
                f'a template pair must be [positive, negative], both with {{c}}, not {item!r}'
            )
    if not pairs:
        raise ValueError('zero_shot.templates must name at least one template')
    return pairs


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
