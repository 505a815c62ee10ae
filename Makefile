# The two commands of the README: `make demo` (the main job) and `make test`.
# Both run in a project virtual environment, .venv, made on first use and reinstalled only when
# setup.cfg or pyproject.toml change; the system Python is left untouched. The venv sees the
# system's packages (--system-site-packages), so a machine that already has the pinned torch
# does not download it again. torch and torchvision are pinned to the builds that lie on this
# workplace's disk (override TORCH for other machines).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
OUT ?= figures
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist
WORDNET := /usr/share/wordnet/data.noun
PHOTO_POOL := /usr/share/doc/opencv-doc/examples/data/baboon.jpg

.PHONY: install data photos demo test lint

# Debian data packages: Fashion-MNIST (the cluttered scenes' items) and WordNet (class search:
# "horse" finds sorrel).
data:
	@test -d $(FASHION_MNIST) -a -f $(WORDNET) || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq dataset-fashion-mnist wordnet-base; }

# The real photos of the grid pointing benchmark (benchmarks/grid_pointing.py; 250 MB): OpenCV's
# sample photos and Tux Paint's photo stamps, as Debian ships them. Only the contents are needed.
photos:
	@test -f $(PHOTO_POOL) || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends opencv-doc tuxpaint-stamps-default; }

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(INSTALLED): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $(INSTALLED)

install: data $(INSTALLED)

demo: install
	$(PY) -m captum_feedback demo --out $(OUT)

lint: install
	$(PY) -m ruff check captum_feedback tests examples benchmarks scripts

test: photos lint
	$(PY) -m pytest
