# Every target builds its own virtualenv, so a fresh clone needs nothing but a Python that pyproject.toml's
# requires-python accepts. CI tests the pinned CPU build of torch; the package itself accepts any torch >= 2.1.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow test-vision lint bench clean browser-deps

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# nilearn only for the MNI152 template files inside its wheel (sample scans, demo training, their tests):
	# none of its code runs, so none of its dependencies is installed.
	$(BIN)/pip install -q --no-deps nilearn==0.14.1
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/mri-lrp explain sample_scans/ --rule alphabeta --alpha 2 --beta 1 --masks sample_scans/masks --out demo_out
	@echo "open demo_out/report.html (or demo_out/summary.csv and demo_out/scans/*/overlay.png)"

test: $(STAMP)
	$(BIN)/ruff check mri_lrp tests benchmarks scripts
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# torchvision/timm networks and the ViT parity with LXT: their own venv (torch 2.14.1 + torchvision + timm + LXT).
test-vision:
	bash scripts/make_vision_venv.sh
	.venv-vision/bin/pytest -q -m slow tests/test_zoo_torchvision.py tests/test_lrp_lxt.py

# The slow set's report-in-a-browser and BIDS-validator tests: Debian's chromium (needs root) and npm packages.
browser-deps:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error

bench: $(STAMP)
	$(BIN)/python benchmarks/lrp_speed.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
