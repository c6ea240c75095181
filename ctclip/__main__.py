"""`python -m ctclip VERB ...` (also what `torchrun -m ctclip train ...` runs)."""

import sys

from ctclip.cli import main

sys.exit(main())
