"""`ctclip configs {list,export}`: the run configs shipped inside the package.

Every `--config` flag takes a file path or one of these names, so an installed wheel runs without a
clone; `export` gives editable copies whose `base:` lines still resolve beside each other.
"""

from __future__ import annotations

import argparse

HELP = 'list the packaged run configs, or export editable copies of them'
DESCRIPTION = """The YAML/JSON run configs shipped inside the package (train, deepspeed, bench, label,
preprocess). Any --config flag takes a file path or one of these names.

  ctclip configs list                 # every name with its one-line summary
  ctclip configs list train           # one kind
  ctclip configs export my_configs/   # editable copies: my_configs/train/stage1-small.yaml, ...
  ctclip train --config my_configs/train/stage1-small.yaml ...
  ctclip train --config train/stage1-small ...   # the packaged one, by name"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='action', metavar='ACTION')
    sub.required = True
    p = sub.add_parser('list', help='packaged config names and their one-line summaries')
    p.add_argument('kind', nargs='?', help='only this kind (train, deepspeed, bench, ...)')
    p = sub.add_parser('export', help='write editable copies into a folder')
    p.add_argument('dest', help='folder to write DEST/<kind>/<name>.yaml into')
    p.add_argument('--kind', help='only this kind (train, deepspeed, bench, ...)')
    p.add_argument('--force', action='store_true', help='overwrite files that already exist')


def _summary(text: str) -> str:
    """The first comment line of a YAML config (JSON has none)."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('#'):
            return line.lstrip('#').strip()
        if line:
            break
    return ''


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from ctclip.config import export_configs, list_configs, packaged_text

    if overrides:
        raise SystemExit(f'ctclip configs takes no key=value overrides, not {overrides[0]!r}')
    if args.action == 'list':
        try:
            names = list_configs(args.kind)
        except ValueError as exc:
            raise SystemExit(f'ctclip configs list: {exc}') from None
        width = max((len(n) for n in names), default=0)
        for name in names:
            print(f'{name:<{width}}  {_summary(packaged_text(name))}'.rstrip())
        return 0
    try:
        written = export_configs(args.dest, force=args.force, kind=args.kind)
    except (FileExistsError, ValueError) as exc:
        raise SystemExit(f'ctclip configs export: {exc}') from None
    print(f'{len(written)} configs written to {args.dest}')
    return 0
