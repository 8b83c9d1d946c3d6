"""`python -m segmentation` is the `bgremover` command line."""

import sys

from segmentation.cli import main

sys.exit(main())
