"""`python -m benchmarks` is the same as `ctclip bench`."""

import sys

from ctclip.cli import main

if __name__ == '__main__':
    sys.exit(main(['bench', *sys.argv[1:]]))
