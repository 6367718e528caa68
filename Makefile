# Two entry points that install what they need into ./.venv on first use:
#   make demo   trains the tiny config on the toy world (the embedded default data)
#   make test   runs lint and the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m rt2_jax.train --config=configs/tiny.py --workdir=runs/tiny

clean:
	rm -rf $(VENV) runs *.egg-info
