"""The SQLite response cache: keyed by text, model, prompt and schema; survives reopening."""

from __future__ import annotations

import sqlite3

import pytest

from llm_labeling.cache import ResponseCache

FINDING = {'finding': 'Cardiomegaly', 'status': 'present', 'quote': 'big heart'}


def test_put_get_and_persist(tmp_path):
    path = tmp_path / 'c.sqlite'
    with ResponseCache(path, 'm', 'p1', 's1') as cache:
        assert cache.get('text') is None
        cache.put('text', [FINDING], 10, 5)
    with ResponseCache(path, 'm', 'p1', 's1') as cache:
        hit = cache.get('text')
        assert (hit.findings, hit.prompt_tokens, hit.completion_tokens) == ([FINDING], 10, 5)
        assert cache.hits == 1 and len(cache) == 1


@pytest.mark.parametrize('other', [('m2', 'p1', 's1'), ('m', 'p2', 's1'), ('m', 'p1', 's2')])
def test_any_key_part_changes_misses(tmp_path, other):
    with ResponseCache(tmp_path / 'c.sqlite', 'm', 'p1', 's1') as cache:
        cache.put('text', [FINDING], 1, 1)
    with ResponseCache(tmp_path / 'c.sqlite', *other) as cache:
        assert cache.get('text') is None
        assert cache.get('text ') is None


def test_not_a_database(tmp_path):
    path = tmp_path / 'c.sqlite'
    path.write_bytes(b'this is not sqlite' * 100)
    with pytest.raises(ValueError, match='not a usable SQLite file'):
        ResponseCache(path, 'm', 'p', 's')


def test_stores_no_request_settings(tmp_path):
    with ResponseCache(tmp_path / 'c.sqlite', 'm', 'p', 's') as cache:
        cache.put('text', [FINDING], 1, 1)
    columns = [
        r[1] for r in sqlite3.connect(tmp_path / 'c.sqlite').execute('PRAGMA table_info(responses)')
    ]
    assert 'text' not in columns and not any('key' in c and c != 'key' for c in columns)
