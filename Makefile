# The two commands of the README: `make demo` (the main job) and `make test`.
# Each installs what it needs first; torch and torchvision are pinned to the builds
# that lie on this workplace's disk (override TORCH for other machines).
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
OUT ?= figures
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: install data demo test lint

# Fashion-MNIST (the cluttered-scene benchmark's items) comes from Debian's dataset-fashion-mnist.
data:
	@test -d $(FASHION_MNIST) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

install: data
	$(PYTHON) -m pip install -q $(TORCH)
	$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	$(PYTHON) -m captum_feedback.cli demo --out $(OUT)

lint: install
	$(PYTHON) -m ruff check captum_feedback tests examples benchmarks scripts

test: lint
	$(PYTHON) -m pytest
