"""Validated settings: one dataclass per section, and unknown keys fail before any work.

A misspelt key (`train.ckpt_evry=10`) must never be accepted and ignored: a SLURM job would then
spend its hours with a setting nobody asked for. Every verb builds its typed config through
`from_mapping`, which rejects unknown keys in one line naming the key, its section and the closest
valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar('T')


class UnknownSettingError(ValueError):
    """A setting key that the section does not have."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid name nearest to a misspelt one, or None when nothing is close."""
    found = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return found[0] if found else None


def _dotted(section: str, key: str) -> str:
    return f'{section}.{key}' if section else str(key)


def check_keys(mapping: Mapping, valid: Iterable[str], section: str = '') -> None:
    """Raise `UnknownSettingError` for the first key of `mapping` not in `valid`."""
    valid = list(valid)
    for key in mapping:
        if key not in valid:
            near = closest(key, valid)
            where = f"section '{section}'" if section else 'the top level'
            hint = f"; did you mean '{_dotted(section, near)}'?" if near else '.'
            raise UnknownSettingError(
                f"Unknown setting '{_dotted(section, key)}' in {where}{hint} "
                f'Valid keys: {", ".join(sorted(valid))}'
            )


def _dataclass_type(hint: Any) -> type | None:
    """The dataclass inside a field's type hint (`Sub`, `Sub | None`), if there is one."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg) and isinstance(arg, type):
            return arg
    return None


def _only_section(hint: Any) -> bool:
    """Whether a field's type is a dataclass alone (`Sub` or `Sub | None`), with no other form."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return dataclasses.is_dataclass(hint) or (len(args) == 1 and dataclasses.is_dataclass(args[0]))


def from_mapping(cls: type[T], data: Mapping | None, section: str = '') -> T:
    """Build dataclass `cls` from a mapping, recursing into dataclass-typed fields.

    Keys the mapping leaves out keep the dataclass defaults; unknown keys raise
    `UnknownSettingError`; a section given as a non-mapping raises `TypeError`.
    """
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        where = f"'{section}'" if section else 'The settings'
        raise TypeError(f'{where} must be a mapping, not {type(data).__name__} ({data!r})')
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(data, fields, section)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_type(hints.get(key))
        if sub is not None and (isinstance(value, Mapping) or value is None and sub is hints[key]):
            kwargs[key] = from_mapping(sub, value, _dotted(section, key))
        elif (
            sub is not None
            and _only_section(hints[key])
            and not isinstance(value, (sub, type(None)))
        ):
            # a section given a plain value (`retry=3`) must not reach the dataclass unchecked
            raise TypeError(
                f"'{_dotted(section, key)}' must be a mapping, not {type(value).__name__} "
                f'({value!r})'
            )
        else:
            kwargs[key] = value
    return cls(**kwargs)


def to_mapping(obj: Any) -> Any:
    """A dataclass config back to plain dicts and lists (for `resolved_config.yaml`)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_mapping(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    return obj


@dataclasses.dataclass
class FailureBudget:
    """How many failed items a run may have and still exit 0 (the `failures` section of a verb).

    The default is none: a run with any failed volume or report exits non-zero, so a job chain
    never goes on with a silently thinner cohort. Raise `max_fraction` to accept a known share of
    bad inputs (they are still listed in the failures report).
    """

    max_fraction: float = 0.0

    def __post_init__(self) -> None:
        value = self.max_fraction
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f'failures.max_fraction must be a number in [0, 1], not {value!r}')

    def exceeded(self, failed: int, total: int) -> bool:
        """Whether `failed` of `total` items is more than the budget allows."""
        return failed > self.max_fraction * total
