"""The demo's resumable stage chain: skip what is done, redo what is stale, keep what resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctclip.app.pipeline import Pipeline, Stage


class Recorder:
    """Stages that write a file into their output folder and log each run."""

    def __init__(self, root: Path):
        self.root, self.runs = root, []

    def stage(self, name: str, settings: dict, fail: bool = False) -> Stage:
        out = self.root / name

        def run(s: dict) -> dict:
            self.runs.append(name)
            out.mkdir(parents=True, exist_ok=True)
            (out / f'run{len(self.runs)}').touch()
            if fail:
                raise KeyboardInterrupt
            return {'files': sorted(p.name for p in out.iterdir())}

        return Stage(name, name, run, settings, (out,))

    def pipeline(self, settings: dict[str, dict], fail: str = '') -> Pipeline:
        stages = [self.stage(n, s, fail=n == fail) for n, s in settings.items()]
        return Pipeline(self.root, stages, progress=False)


SETTINGS = {'a': {'n': 1}, 'b': {'epochs': 2}, 'c': {}}


def test_a_rerun_skips_finished_stages(tmp_path):
    rec = Recorder(tmp_path)
    rec.pipeline(SETTINGS).run()
    rec.pipeline(SETTINGS).run()
    assert rec.runs == ['a', 'b', 'c']


def test_new_settings_start_that_stage_afresh_and_redo_what_follows(tmp_path):
    rec = Recorder(tmp_path)
    rec.pipeline(SETTINGS).run()
    results = rec.pipeline({**SETTINGS, 'b': {'epochs': 3}}).run()
    assert rec.runs == ['a', 'b', 'c', 'b', 'c']
    assert results['b'] == {'files': ['run4']}  # the old run's outputs were removed, not resumed
    assert results['a'] == {'files': ['run1']}


def test_force_redoes_a_stage_and_everything_after_it(tmp_path):
    rec = Recorder(tmp_path)
    rec.pipeline(SETTINGS).run()
    rec.pipeline(SETTINGS).run(force=('b',))
    assert rec.runs == ['a', 'b', 'c', 'b', 'c']


def test_an_interrupted_stage_keeps_its_outputs_to_resume_from(tmp_path):
    rec = Recorder(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        rec.pipeline(SETTINGS, fail='b').run()
    results = rec.pipeline(SETTINGS).run()
    assert rec.runs == ['a', 'b', 'b', 'c']
    assert results['b'] == {'files': ['run2', 'run3']}  # the partial run is still there
