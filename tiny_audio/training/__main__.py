"""`python -m tiny_audio.training OVERRIDES...`: what `ta train --nproc N` runs under torchrun."""

import sys

from tiny_audio.training.run import main

raise SystemExit(main(sys.argv[1:]))
