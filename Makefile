# The two commands of the README. Each sets up what it needs on a fresh machine (Python 3.11, no GPU).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= a weathered red brick wall with moss, photo

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

# The main job: generate with the default model; where it cannot be had (offline, not cached), say so and
# run the same path with the built-in test model.
demo: $(STAMP)
	mkdir -p out
	$(BIN)/scene-diffusion generate "$(PROMPT)" -o out/demo.png --seed 42 --fallback-model testing/tiny-sd
	$(BIN)/python -c "from PIL import Image; print(Image.open('out/demo.png').text['parameters'])"

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The installable Blender extension: dist/scene_diffusion-VERSION.zip
addon:
	$(PYTHON) scripts/build_addon.py

lint: $(STAMP)
	$(BIN)/ruff check backend blender_addon tests benchmarks scripts

clean:
	rm -rf $(VENV) out dist
