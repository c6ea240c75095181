"""Backoff delays and Retry-After parsing."""

from __future__ import annotations

import email.utils
import time

import pytest

from llm_labeling.backends.retry import RetryPolicy, parse_retry_after


def test_retry_after_forms():
    assert parse_retry_after({'retry-after': '3'}) == 3.0
    assert parse_retry_after({'retry-after-ms': '250'}) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < parse_retry_after({'retry-after': date}) <= 30
    assert parse_retry_after({}) is None


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(initial=1.0, multiplier=2.0, maximum=5.0, jitter=0.0)
    assert [policy.delay(n) for n in range(4)] == [1.0, 2.0, 4.0, 5.0]
    assert policy.delay(0, retry_after=3.0) == 3.0
    assert policy.delay(0, retry_after=100.0) == 5.0


def test_bad_policy():
    with pytest.raises(ValueError, match='max_retries must be >= 0, not -1'):
        RetryPolicy(max_retries=-1)
