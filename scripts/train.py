"""Train a model: `python scripts/train.py +experiments=mlp training.max_steps=10` (Hydra overrides)."""

import sys

from tiny_audio.recipe.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
