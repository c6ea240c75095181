"""The `ctclip` console script: one verb per stage, each a thin layer over one library call.

Verb modules are imported lazily, and each must stay cheap to import (no torch or monai at module
level), so `ctclip --help` and `ctclip synth` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

from ctclip.config import is_override

# verb -> module holding HELP, add_arguments(parser) and run(args, overrides) -> int
VERBS: dict[str, str] = {
    'synth': 'ctclip.cli.synth',
    'preprocess': 'ctclip.cli.preprocess',
    'label': 'ctclip.cli.label',
    'train': 'ctclip.cli.train',
    'bench': 'ctclip.cli.bench',
    'demo': 'ctclip.cli.demo',
}


def _verb_module(verb: str) -> ModuleType:
    return importlib.import_module(VERBS[verb])


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--config', help='YAML config file; later flags and key=value overrides win'
    )
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='ctclip',
        description='3D chest-CT vision-language toolkit. Every verb takes --config FILE.yaml plus '
        'dotted overrides such as train.lr=1e-4.',
    )
    sub = parser.add_subparsers(dest='verb', metavar='VERB')
    sub.required = True
    for verb in VERBS:
        module = _verb_module(verb)
        verb_parser = sub.add_parser(
            verb,
            help=module.HELP,
            description=getattr(module, 'DESCRIPTION', module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_common_arguments(verb_parser)
        module.add_arguments(verb_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; `argv` is a list so tests and `python -m <package>` can call it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [t for t in argv if is_override(t)]
    rest = [t for t in argv if not is_override(t)]
    args = build_parser().parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format='%(asctime)s %(levelname)s %(name)s: %(message)s',
    )
    try:
        return int(_verb_module(args.verb).run(args, overrides) or 0)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
