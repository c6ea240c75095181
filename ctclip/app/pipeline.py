"""A resumable chain of stages with one progress display.

Each finished stage leaves `stages/<name>.json` (written atomically) holding its summary and the
settings it ran with. A rerun skips stages whose marker matches the current settings, so an
interrupted demo picks up at the stage it was in; the stage itself resumes from its own outputs
(the cache, the label cache and the training checkpoints are all resumable).

A stage that runs again because it was forced or its settings changed first removes its declared
`outputs` (a training run would otherwise resume a checkpoint of the old settings), and every
stage after a stage that ran runs again too: its inputs changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from ctcommon.atomic import write_json

_logger = logging.getLogger(__name__)


def write_json_atomic(path: Path, data: Any) -> None:
    """The demo's JSON records: sorted keys, anything else as `str` (`ctcommon.atomic`)."""
    write_json(path, data, newline=False, sort_keys=True, default=str)


def cli_argv(
    *words: str, overrides: Mapping[str, Any] | None = None, extra: Iterable[str] = (), **flags: Any
) -> list[str]:
    """The `ctclip` command line of one stage, exactly as a user would type it.

    `words` are the verb (and sub-verb); each flag becomes `--name value` (`_` -> `-`; True is a
    bare switch; None and False leave it out); `overrides` become `key=value`; `extra` holds
    `key=value` tokens as given. The app layer chains the CLI verbs on purpose, so a stage can
    never drift from what the CLI does.
    """
    argv = [str(w) for w in words]
    for name, value in flags.items():
        if value is None or value is False:
            continue
        argv.append(f'--{name.replace("_", "-")}')
        if value is not True:
            argv.append(str(value))
    argv += [f'{key}={value}' for key, value in (overrides or {}).items()]
    return argv + [str(token) for token in extra]


def settings_hash(settings: dict) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Stage:
    """One step of a pipeline: `run(settings)` does the work and returns a JSON-able summary."""

    name: str
    title: str
    run: Callable[[dict], dict]
    settings: dict = field(default_factory=dict)
    outputs: tuple[Path, ...] = ()  # removed before a rerun with new settings or inputs


class Pipeline:
    def __init__(self, out_dir: Path, stages: list[Stage], progress: bool = True):
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f'Stage names must be unique, not {names}')
        self.out_dir = Path(out_dir)
        self.stages = stages
        self.progress = progress
        self.marker_dir = self.out_dir / 'stages'

    def marker(self, stage: Stage) -> Path:
        return self.marker_dir / f'{stage.name}.json'

    def done(self, stage: Stage) -> dict | None:
        """The stored summary if the stage finished with the same settings, else None."""
        path = self.marker(stage)
        if not path.exists():
            return None
        data = json.loads(path.read_text(encoding='utf-8'))
        if data.get('settings_hash') != settings_hash(stage.settings):
            _logger.info('stage %s ran with other settings before: running it again', stage.name)
            return None
        return data

    def run(self, force: tuple[str, ...] = ()) -> dict[str, dict]:
        results: dict[str, dict] = {}
        bar = tqdm(
            total=len(self.stages), desc='ctclip demo', unit='stage', disable=not self.progress
        )
        upstream_ran = False
        for stage in self.stages:
            bar.set_postfix_str(stage.title)
            stale = stage.name in force or upstream_ran
            previous = None if stale else self.done(stage)
            if previous is None and (stale or self.marker(stage).exists()):
                self._clear(stage)
            if previous is not None:
                tqdm.write(f'[skip] {stage.title}: done before ({self.marker(stage)})')
                results[stage.name] = previous['summary']
                bar.update(1)
                continue
            tqdm.write(f'[run ] {stage.title}')
            upstream_ran = True
            start = time.time()
            summary = stage.run(stage.settings) or {}
            seconds = time.time() - start
            write_json_atomic(
                self.marker(stage),
                {
                    'stage': stage.name,
                    'settings': stage.settings,
                    'settings_hash': settings_hash(stage.settings),
                    'seconds': round(seconds, 1),
                    'summary': summary,
                },
            )
            tqdm.write(f'[done] {stage.title} in {seconds:.0f} s')
            results[stage.name] = summary
            bar.update(1)
        bar.close()
        return results

    def _clear(self, stage: Stage) -> None:
        self.marker(stage).unlink(missing_ok=True)
        for path in stage.outputs:
            if path.is_dir():
                tqdm.write(f'[new ] {stage.title}: removing the previous run in {path}')
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def timings(self) -> dict[str, float]:
        out = {}
        for stage in self.stages:
            path = self.marker(stage)
            if path.exists():
                out[stage.name] = json.loads(path.read_text(encoding='utf-8')).get('seconds', 0.0)
        return out
