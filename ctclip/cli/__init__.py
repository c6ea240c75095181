"""The `ctclip` console script: one verb per stage, each a thin layer over one library call.

Verb modules are imported lazily, and each must stay cheap to import (no torch or monai at module
level), so `ctclip --help` and `ctclip synth` start fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import re
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
    'ground': 'ctclip.cli.ground',
    'demo': 'ctclip.cli.demo',
    'configs': 'ctclip.cli.configs',
}


def _verb_module(verb: str) -> ModuleType:
    return importlib.import_module(VERBS[verb])


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--config',
        help='YAML file or packaged name such as train/stage1-small (ctclip configs list); '
        'later flags and key=value overrides win',
    )
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='ctclip',
        description='3D chest-CT vision-language toolkit. Every verb takes --config (a YAML file '
        'or a packaged name such as train/stage1-small: ctclip configs list) plus dotted overrides '
        'such as train.lr=1e-4.',
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


# errno -> the words a user needs; the path comes from the exception
_OS_PROBLEMS = {
    errno.ENOSPC: 'disk full (no space left on device)',
    errno.EDQUOT: 'disk quota exceeded',
    errno.EROFS: 'read-only file system',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'permission denied',
    errno.ENOTDIR: 'a part of this path is a file, not a folder',
    errno.EISDIR: 'is a folder, not a file',
    errno.ENOENT: 'does not exist',
    errno.EEXIST: 'already exists',
}
_WORKER_ERROR = re.compile(r'^Caught (\w+) in DataLoader worker process', re.MULTILINE)
_WORKER_FAULTS = ('CacheCorruptError', 'OSError', 'ValueError', 'FileNotFoundError')


def _missing_extra(exc: ModuleNotFoundError, verb: str) -> str | None:
    """The extra that provides the module, or None (a module of ours: a bug, so the traceback)."""
    try:
        from ctclip.cli.extras import missing_extra_message
    except ImportError:  # the extras table is missing: still say which package is absent
        return f'ctclip {verb}: the Python package {exc.name!r} is not installed'
    message = missing_extra_message(exc, verb)
    if message is None or message.startswith(f'ctclip {verb}'):
        return message
    return f'ctclip {verb}: {message}'


def _os_error_line(exc: OSError) -> str:
    problem = _OS_PROBLEMS.get(exc.errno) if exc.errno is not None else None
    if problem is None:
        problem = exc.strerror or str(exc)
    elif exc.errno == errno.EEXIST and exc.filename and os.path.isfile(exc.filename):
        problem = 'is a file, not a folder'  # mkdir of an output folder
    elif exc.strerror and exc.strerror.lower() not in problem:
        problem = f'{problem} ({exc.strerror})'
    if exc.filename is None:
        return problem if exc.errno is not None else str(exc)
    target = f' -> {exc.filename2}' if getattr(exc, 'filename2', None) else ''
    return f'{exc.filename}{target}: {problem}'


def _from_settings(exc: BaseException) -> bool:
    """A TypeError is a user's error when settings code raised it; elsewhere it is a bug."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename if tb is not None else ''
    return 'must be' in str(exc) or where.endswith(('settings.py', 'config.py'))


def error_line(exc: BaseException, verb: str) -> str | None:
    """One line `ctclip VERB: PATH: problem` for a failure a user can fix; None for a bug.

    `-v` shows the traceback instead.
    """
    from preprocessing.errors import CacheCorruptError

    prefix = f'ctclip {verb}: '
    if _WORKER_ERROR.search(str(exc)):  # a DataLoader worker's error, re-raised as its text
        from_worker = _worker_error(exc)
        return None if from_worker is None else prefix + from_worker
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return _missing_extra(exc, verb)
    if isinstance(exc, CacheCorruptError):
        return prefix + str(exc)
    if isinstance(exc, OSError):
        return prefix + _os_error_line(exc)
    if isinstance(exc, ValueError) or isinstance(exc, TypeError) and _from_settings(exc):
        return prefix + ' '.join(str(exc).split())
    return None


def _worker_error(exc: BaseException) -> str | None:
    """The last line of a DataLoader worker's traceback for a user's fault; None for a bug."""
    found = _WORKER_ERROR.search(str(exc))
    if not found or found.group(1) not in _WORKER_FAULTS:
        return None
    last = [line for line in str(exc).splitlines() if line.strip()][-1]
    return last.split(': ', 1)[-1]


def _is_usage_error(exc: BaseException) -> bool:
    """Bad settings or input exit 2 (as argparse does); a failed read or write exits 1."""
    from preprocessing.errors import CacheCorruptError

    return isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, CacheCorruptError)


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
    except Exception as exc:
        line = error_line(exc, args.verb)
        if line is None or args.verbose:  # a bug, or -v: the traceback is what helps
            raise
        print(line, file=sys.stderr)
        return 2 if _is_usage_error(exc) else 1


if __name__ == '__main__':
    sys.exit(main())
