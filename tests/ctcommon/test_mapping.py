"""ctcommon.mapping.deep_merge: sections merge, values replace, inputs stay untouched."""

from __future__ import annotations

from ctcommon.mapping import deep_merge


def test_sections_merge_and_values_replace():
    base = {'train': {'lr': 1e-3, 'steps': 10, 'sched': {'kind': 'cos'}}, 'seed': 0, 'tags': [1]}
    update = {'train': {'lr': 5e-4, 'sched': {'warmup': 2}}, 'tags': [2, 3], 'new': {'a': 1}}
    assert deep_merge(base, update) == {
        'train': {'lr': 5e-4, 'steps': 10, 'sched': {'kind': 'cos', 'warmup': 2}},
        'seed': 0,
        'tags': [2, 3],
        'new': {'a': 1},
    }


def test_a_value_replaces_a_section_and_back():
    assert deep_merge({'window': {'hu_min': 0}}, {'window': [-1000, 200]}) == {
        'window': [-1000, 200]
    }
    assert deep_merge({'window': None}, {'window': {'hu_min': 0}}) == {'window': {'hu_min': 0}}


def test_inputs_are_not_modified_and_not_shared():
    base, update = {'a': {'b': [1]}}, {'a': {'c': {'d': 1}}}
    out = deep_merge(base, update)
    out['a']['b'].append(2)
    out['a']['c']['d'] = 9
    assert base == {'a': {'b': [1]}} and update == {'a': {'c': {'d': 1}}}
