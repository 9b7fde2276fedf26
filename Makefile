# `make run` and `make test` set themselves up: a .venv with pinned torch, then the package.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL := models/llmsys-tiny-chat
PORT ?= 8000

.PHONY: setup run test lint bench clean chromium organism

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	@echo "Serving the bundled model ($(MODEL)) over the OpenAI API; Ctrl-C stops"
	$(BIN)/llmsys serve --model $(MODEL) --served-model-name llmsys-tiny-chat --port $(PORT)

# Rebuild the bundled model from scratch: data, tokenizer, pretraining, SFT, evaluation, card
# (about an hour on 2 CPU cores; intermediate files in build/organism).
organism: $(STAMP)
	$(BIN)/python -m llmsys.train.organism --out $(MODEL) --work build/organism

# Chromium for the playground's browser test (skipped, with a reason, where it cannot be had).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "chromium not installed: tests/serve/test_playground.py will be skipped"

test: $(STAMP) chromium
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check llmsys tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/forward.py

clean:
	rm -rf build
