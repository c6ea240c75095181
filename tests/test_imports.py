"""The import rules of docs/architecture.md ("may import"), enforced on every library module.

Packages meet through files, and the shared layer `ctcommon` sits below all of them. The test
reads each module's source (module-level and function-level imports alike, with `ast`, so nothing
is executed) and fails naming the module, the line and the rule it breaks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the packages of ours it may import (besides itself).
MAY_IMPORT: dict[str, set[str]] = {
    'ctcommon': set(),
    'preprocessing': {'ctcommon'},
    'synth': {'ctcommon'},
    'llm_labeling': {'ctcommon', 'preprocessing'},
    'ctclip': {'ctcommon', 'preprocessing', 'llm_labeling'},
    'benchmarks': {'ctcommon', 'preprocessing', 'synth', 'llm_labeling', 'ctclip'},
}
OURS = set(MAY_IMPORT)
# The application layer chains the stages and may import anything; library code never imports it.
APPLICATION = ('ctclip.cli', 'ctclip.app')


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def is_application(module: str) -> bool:
    return module.split('.')[-1] == '__main__' or any(
        module == app or module.startswith(app + '.') for app in APPLICATION
    )


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
    module = _module_name(path)
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[: len(base) - (node.level - 1)]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            found.append((node.lineno, target))
            # `from ctclip import cli` imports the submodule ctclip.cli.
            found += [(node.lineno, f'{target}.{alias.name}') for alias in node.names]
    return found


def violations(path: Path) -> list[str]:
    """The rule breaks in one library file, each as 'file:line: what'."""
    module = _module_name(path)
    if is_application(module):
        return []
    own = module.split('.')[0]
    out = []
    for line, target in imported_modules(path):
        top = target.split('.')[0]
        where = f'{path.relative_to(ROOT)}:{line}'
        if is_application(target) and top in OURS:
            out.append(f'{where}: library code imports the application layer ({target})')
        elif top in OURS and top != own and top not in MAY_IMPORT[own]:
            allowed = sorted(MAY_IMPORT[own]) or 'nothing of ours'
            out.append(f'{where}: {own} may import {allowed}, not {target}')
    return out


def library_files() -> list[Path]:
    return sorted(p for pkg in OURS for p in (ROOT / pkg).rglob('*.py'))


def test_every_package_is_walked():
    files = library_files()
    assert {f.relative_to(ROOT).parts[0] for f in files} == OURS
    assert len(files) > 50


def test_library_code_follows_the_import_rules():
    found = [v for f in library_files() for v in violations(f)]
    assert not found, 'import rule violations:\n' + '\n'.join(found)


@pytest.mark.parametrize(
    ('package', 'source', 'broken'),
    [
        ('ctcommon', 'import numpy\nfrom preprocessing import cache\n', True),
        ('synth', 'def f():\n    from llm_labeling.schema import FINDINGS\n', True),
        ('synth', 'from ctcommon.findings import FINDINGS\n', False),
        ('llm_labeling', 'from ctclip import prompts\n', True),
        ('ctclip/training', 'from synth import cohort\n', True),
        ('ctclip/training', 'from .. import cli\n', True),
        ('ctclip/training', 'from ..inference import load_model\n', False),
        ('benchmarks', 'from ctclip.app import demo\n', True),
        ('benchmarks', 'from synth import cohort\nimport ctclip.inference\n', False),
        ('ctclip/cli', 'from synth import cohort\nfrom benchmarks import runner\n', False),
    ],
)
def test_the_checker_catches_each_kind_of_break(tmp_path, monkeypatch, package, source, broken):
    """The rule check itself must fail on a break (a checker that passes everything is no test)."""
    monkeypatch.setattr(f'{__name__}.ROOT', tmp_path)
    folder = tmp_path / package
    folder.mkdir(parents=True)
    path = folder / 'mod.py'
    path.write_text(source)
    assert bool(violations(path)) is broken, violations(path)
