"""Retrieval: hand-computed cases, each reference quirk on its own, and a literal port of CT-CLIP's loops."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.retrieval import (
    RetrievalOptions,
    recall_at_k,
    report_ranks,
    volume_map_at_k,
    volume_map_values,
)

# 4 volumes; v3 has no positive label, so it is a query but never a candidate.
LABELS = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=float)
EMB = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])


def _ctclip_volume_to_volume(image, labels, k_list):
    """CT-CLIP's scripts/volume_to_volume.py main loop, kept as written (minus pandas and I/O)."""

    def calc_similarity(a, b):
        both = sum(1 for x, y in zip(a, b, strict=True) if x == 1 and y == 1)
        one = sum(1 for x, y in zip(a, b, strict=True) if (x, y) in ((0, 1), (1, 0)))
        return both / (both + one)

    second = [k for k in range(len(image)) if np.sum(labels[k]) != 0]
    ratios_external, outs = [], []
    for n in k_list:
        for i in range(len(image)):
            crosses = [
                np.dot(image[i], image[k]) / (np.linalg.norm(image[i]) * np.linalg.norm(image[k]))
                for k in second
            ]
            top = [
                idx for idx, _ in sorted(enumerate(crosses), key=lambda x: x[1], reverse=True)[:n]
            ]
            ratios_external.append(
                np.mean([calc_similarity(labels[i], labels[second[t]]) for t in top])
            )
        outs.append(float(np.mean(ratios_external)))
    return outs


def _ctclip_report_to_volume(image, text, k):
    hits = 0
    for i in range(len(text)):
        crosses = [float(text[i] @ image[j]) for j in range(len(image))]
        top = [idx for idx, _ in sorted(enumerate(crosses), key=lambda x: x[1], reverse=True)[:k]]
        hits += i in top
    return hits / len(text)


def test_hand_computed_map_corrected():
    got = volume_map_at_k(EMB, LABELS, RetrievalOptions(map_ks=(1, 2)))
    assert got[1] == pytest.approx(1 / 3)  # q0->v1 0.5, q1->v0 0.5, q2->v1 0; q3 skipped
    assert got[2] == pytest.approx(1 / 6)


def test_hand_computed_map_reference():
    got = volume_map_at_k(EMB, LABELS, RetrievalOptions.reference(map_ks=(1, 2)))
    assert got[1] == pytest.approx(3 / 4)  # every positive query finds itself; q3 scores 0
    assert got[2] == pytest.approx((3 / 4 + 1 / 2) / 2)  # running mean over K = 1, 2


def test_quirk_query_kept_in_pool():
    only = RetrievalOptions(exclude='none', map_ks=(1,))
    values, valid = volume_map_values(EMB, LABELS, only)
    assert values[:3, 0].tolist() == [1.0, 1.0, 1.0] and not valid[3]


def test_quirk_negative_queries_score_zero():
    zero = volume_map_at_k(EMB, LABELS, RetrievalOptions(negative_queries='zero', map_ks=(1,)))
    assert zero[1] == pytest.approx((0.5 + 0.5 + 0) / 4)


def test_quirk_cumulative_k():
    plain, _ = volume_map_values(EMB, LABELS, RetrievalOptions(map_ks=(1, 2)))
    cum, _ = volume_map_values(EMB, LABELS, RetrievalOptions(map_ks=(1, 2), cumulative_k=True))
    assert np.allclose(cum[:, 1], (plain[:, 0] + plain[:, 1]) / 2) and np.allclose(
        cum[:, 0], plain[:, 0]
    )


def test_quirk_ties_by_index_vs_pessimistic():
    same = np.ones((5, 3))  # a constant model: every similarity ties
    ranks_idx = report_ranks(same, same, RetrievalOptions(ties='index'))
    ranks_pess = report_ranks(same, same, RetrievalOptions())
    assert ranks_idx.tolist() == [0, 1, 2, 3, 4]  # stable sort: earlier rows first
    assert ranks_pess.tolist() == [4] * 5
    assert recall_at_k(ranks_pess, (1, 4, 5)) == {1: 0.0, 4: 0.0, 5: 1.0}


def test_exclude_same_scan_and_report_match_scan():
    emb = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.1, 1.0]])
    labels = np.array([[1, 0], [1, 0], [0, 1], [1, 1]], dtype=float)
    units = np.array([0, 0, 1, 2])  # rows 0 and 1 are reconstructions of one scan
    by_scan = volume_map_values(emb, labels, RetrievalOptions(exclude='scan', map_ks=(1,)), units)[
        0
    ]
    assert by_scan[0, 0] == pytest.approx(0.5)  # its twin is excluded, next is row 3 (J = 1/2)
    text = np.array([[1.0, 0.002], [1.0, 0.002], [0.0, 1.0], [0.1, 1.0]])
    ranks = report_ranks(emb, text, RetrievalOptions(report_match='scan'), units)
    assert ranks[1] == 0  # row 0 (same scan) ranks first and counts as a hit
    assert report_ranks(emb, text, RetrievalOptions(), units)[1] == 1


@pytest.mark.parametrize('seed', [0, 1])
def test_reference_mode_equals_ctclip_scripts(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random((60, 5)) < 0.25).astype(float)
    image = rng.normal(size=(60, 8)) + labels @ rng.normal(size=(5, 8))
    image[7] = image[3]  # an exact duplicate: ties must break by position
    ks = (1, 5, 10, 50)
    expected = _ctclip_volume_to_volume(image, labels, ks)
    got = volume_map_at_k(image, labels, RetrievalOptions.reference(map_ks=ks, chunk_size=16))
    assert [got[k] for k in ks] == pytest.approx(expected, abs=1e-6)
    unit = image / np.linalg.norm(image, axis=1, keepdims=True)
    text = unit + 0.3 * rng.normal(size=unit.shape)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    ranks = report_ranks(unit, text, RetrievalOptions.reference(chunk_size=7))
    for k in (5, 10, 50):
        assert recall_at_k(ranks, (k,))[k] == pytest.approx(_ctclip_report_to_volume(unit, text, k))


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(4)
    labels = (rng.random((50, 4)) < 0.3).astype(float)
    emb = rng.normal(size=(50, 6))
    a = volume_map_values(emb, labels, RetrievalOptions(chunk_size=3))[0]
    b = volume_map_values(emb, labels, RetrievalOptions(chunk_size=500))[0]
    assert np.array_equal(a, b)


def test_options_and_inputs_are_validated():
    with pytest.raises(ValueError, match='exclude must be one of'):
        RetrievalOptions(exclude='query')
    with pytest.raises(ValueError, match='increasing positive integers'):
        RetrievalOptions(recall_ks=(10, 5))
    with pytest.raises(ValueError, match='same shape'):
        report_ranks(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match='at least one volume with a positive label'):
        volume_map_values(np.ones((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match='finite'):
        report_ranks(np.full((2, 2), np.nan), np.ones((2, 2)))
    assert RetrievalOptions.reference().as_dict()['protocol'] == 'ctclip-reference'
