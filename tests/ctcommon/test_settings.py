"""ctcommon.settings: unknown keys fail before work starts, naming the key, section, closest."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ctcommon.settings import UnknownSettingError, check_keys, closest, from_mapping, to_mapping


@dataclass
class Retry:
    max_retries: int = 3
    backoff: float = 1.0


@dataclass
class Job:
    name: str = 'run'
    retry: Retry = field(default_factory=Retry)
    limit: Retry | None = None


def test_unknown_key_names_key_section_and_closest():
    with pytest.raises(UnknownSettingError) as info:
        from_mapping(Job, {'retry': {'max_retris': 5}})
    message = str(info.value)
    assert "Unknown setting 'retry.max_retris' in section 'retry'" in message
    assert "did you mean 'retry.max_retries'?" in message
    assert 'Valid keys: backoff, max_retries' in message


def test_top_level_and_no_close_match():
    with pytest.raises(UnknownSettingError, match="'zzz' in the top level. Valid keys: "):
        check_keys({'zzz': 1}, ['name', 'retry'])
    assert closest('nmae', ['name', 'retry']) == 'name'
    assert closest('zzz', ['name', 'retry']) is None
    assert issubclass(UnknownSettingError, ValueError)


def test_nested_sections_defaults_and_round_trip():
    job = from_mapping(Job, {'retry': {'backoff': 2.0}, 'limit': {'max_retries': 1}})
    assert job.retry == Retry(3, 2.0) and job.limit == Retry(1, 1.0) and job.name == 'run'
    assert from_mapping(Job, None) == Job()
    assert from_mapping(Job, to_mapping(job)) == job
    assert to_mapping(job)['retry'] == {'max_retries': 3, 'backoff': 2.0}


def test_a_section_that_is_not_a_mapping_fails():
    with pytest.raises(TypeError, match="'retry' must be a mapping, not int"):
        from_mapping(Job, {'retry': 3}, '')
    with pytest.raises(TypeError, match='The settings must be a mapping, not list'):
        from_mapping(Job, [1])
