"""`python -m preprocessing` is the same as `ctclip preprocess`."""

import sys

from ctclip.cli import main

if __name__ == '__main__':
    sys.exit(main(['preprocess', *sys.argv[1:]]))
