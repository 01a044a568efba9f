"""`python -m tiny_audio.recipe OVERRIDES...`: what `ta train --nproc N` runs under torchrun."""

import sys

from tiny_audio.recipe.run import main

raise SystemExit(main(sys.argv[1:]))
