"""`ctclip label` (being written)."""

from __future__ import annotations

import argparse

HELP = 'label (not available yet)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    raise SystemExit('ctclip label is not available yet')
