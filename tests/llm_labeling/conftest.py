"""Fixtures for the labeling tests: small report files written per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.llm_labeling.helpers import write_ctrate_csv


@pytest.fixture
def ctrate_csv(tmp_path: Path) -> Path:
    return write_ctrate_csv(tmp_path / 'reports.csv')


@pytest.fixture
def many_reports(tmp_path: Path):
    """n distinct reports, for concurrency and resume tests."""

    def make(n: int) -> Path:
        rows = [
            (f'r{i}', f'Report number {i}. Heart size is normal.', 'Not given.') for i in range(n)
        ]
        return write_ctrate_csv(tmp_path / f'reports_{n}.csv', rows)

    return make
