# `make run` and `make test` set themselves up: a .venv with pinned torch, then the package.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := build/demo-llama

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

$(DEMO)/config.json: | $(STAMP)
	$(BIN)/llmsys tiny-checkpoint $(DEMO) --family llama

run: $(STAMP) $(DEMO)/config.json
	@echo "Generating from $(DEMO) (random weights: the text is noise, the speed is real)"
	$(BIN)/llmsys generate --model $(DEMO) --max-tokens 48 --temperature 0.8 --seed 0 \
		"The quick brown fox"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check llmsys tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/forward.py

clean:
	rm -rf build
