# One place for set-up, the embedded default run and the test gate (README and CI call these).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch first and pinned: an unpinned torch from another package's requirements would pull
# several GB of CUDA wheels on machines that already have a suitable build.
TORCH  ?= torch==2.13.0

.PHONY: setup course test lint

$(BIN)/ta: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/ta

setup: $(BIN)/ta

# The embedded default: the course in miniature. Pretrained stand-in models and synthetic speech
# are built once (cached), then the three training stages run on the CPU; ends with a plot.
course: setup
	$(BIN)/ta course

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q
