"""`ctclip synth` (being written)."""

from __future__ import annotations

import argparse

HELP = 'synth (not available yet)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    raise SystemExit('ctclip synth is not available yet')
