# Every target builds its own virtualenv, so a fresh clone needs nothing but a Python that pyproject.toml's
# requires-python accepts. CI tests the pinned CPU build of torch; the package itself accepts any torch >= 2.1.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-cohort sample-scans demo-models test test-slow test-vision lint bench clean browser-deps

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

# The one-minute tour: the T1ce samples through the three demo folds (scan pages, the folds' agreement) and the
# four-sequence cases through the four-sequence model, each with its report.
demo: $(STAMP)
	$(BIN)/mri-lrp explain sample_scans/t1 --checkpoint 'mri_lrp/data/demo_fold*.pt' --rule alphabeta --alpha 2 \
		--beta 1 --masks sample_scans/t1/masks --out demo_out/t1 --quiet
	$(BIN)/mri-lrp explain sample_scans/brats --checkpoint mri_lrp/data/demo_multiseq.pt --rule alphabeta --alpha 2 \
		--beta 1 --masks sample_scans/brats/masks --out demo_out/brats --quiet
	@echo ""
	@echo "Open demo_out/t1/report.html: a row per scan (class, probability, where the relevance lies); click a"
	@echo "  scan for its overlay, its regions and the Folds section (how far the three models agree)."
	@echo "Open demo_out/brats/report.html: the four-sequence cases, with relevance per sequence."
	@echo "The tables behind them: demo_out/*/summary.csv and regions.csv; maps: demo_out/*/scans/*/relevance.nii.gz"

# A cohort of 48 scans from two scanners, explained, then what the model looks at across it (OUT/cohort/).
demo-cohort: $(STAMP)
	$(BIN)/python scripts/make_cohort.py --out demo_cohort/scans
	$(BIN)/mri-lrp explain demo_cohort/scans --out demo_cohort/out --quiet
	$(BIN)/mri-lrp cohort demo_cohort/out --metadata demo_cohort/sites.csv
	@echo "Open demo_cohort/out/report.html (Cohort section) or demo_cohort/out/cohort/"

# Rebuild sample_scans/ and retrain the demo models (about an hour on 2 CPU cores); DEMO.md from their scores.
sample-scans: $(STAMP)
	$(BIN)/python scripts/make_sample_scans.py

demo-models: $(STAMP)
	$(BIN)/python scripts/train_demo.py --model t1ce
	$(BIN)/python scripts/train_demo.py --model multiseq
	for k in 1 2 3; do $(BIN)/python scripts/train_demo.py --model t1ce --fold $$k --epochs 10 || exit 1; done
	for m in t1ce multiseq folds; do $(BIN)/python scripts/evaluate_demo.py --model $$m || exit 1; done

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
	rm -rf $(VENV) demo_out demo_cohort .pytest_cache
