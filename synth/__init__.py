"""Synthetic chest-CT cohorts with reports, in CT-RATE or RAD-ChestCT layout.

`generate_cohort(out, n, seed, layout, small, workers, test_min_count)` is the one entry point; `ctclip synth`
calls it. See docs/synthetic-cohort.md for the layout, the conventions and the truth file.
"""

from __future__ import annotations

from synth.cohort import LAYOUTS, generate_cohort, plan_cohort, plan_test

__all__ = ['LAYOUTS', 'generate_cohort', 'plan_cohort', 'plan_test']
