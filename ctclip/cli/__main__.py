"""`python -m ctclip.cli VERB ...` is the same as `ctclip VERB ...` (launchers such as torchrun take -m)."""

import sys

from ctclip.cli import main

if __name__ == '__main__':
    sys.exit(main())
