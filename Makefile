# The two commands of the README. Each sets up what it needs on a fresh machine (Python 3.11, no GPU).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= a weathered bronze statue of a monkey, green patina

export HF_HUB_OFFLINE ?= 0
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: demo test lint setup clean addon

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,blender]'
	touch $(STAMP)

# The main job: texture Suzanne in the demo scene from 8 views with the default model, write the .blend and
# a preview render. Where the default model cannot be had (offline, not cached), it says so in one line and
# runs the whole path with the built-in test model (which paints noise).
demo: $(STAMP)
	mkdir -p out
	$(BIN)/scene-diffusion texture demo/scene.blend --object Suzanne --prompt "$(PROMPT)" --seed 42 \
		--out out/demo.blend --preview out/demo.png --fallback-model testing/tiny-sd

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The installable Blender extension: dist/scene_diffusion-VERSION.zip
addon:
	$(PYTHON) scripts/build_addon.py

lint: $(STAMP)
	$(BIN)/ruff check backend blender_addon tests benchmarks scripts

clean:
	rm -rf $(VENV) out dist
