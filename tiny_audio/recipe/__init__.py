"""The recipe: what wires the training loop, evaluation and export into one run (`ta train`, `scripts/train.py`)."""
