"""`python -m llm_labeling` is the same as `ctclip label`."""

import sys

from ctclip.cli import main

if __name__ == '__main__':
    sys.exit(main(['label', *sys.argv[1:]]))
