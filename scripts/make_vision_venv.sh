#!/usr/bin/env bash
# Build .venv-vision: torch 2.14.1 + torchvision + timm beside this package, for the slow torchvision/timm test
# (tests/test_zoo_torchvision.py), and LXT for the ViT parity test (tests/test_lrp_lxt.py). torchvision and timm
# do not install beside the main venv's torch 2.13.0, so they get their own venv. The package itself goes in
# without its dependency pins (they name the main torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
VENV=${VENV_VISION:-.venv-vision}
STAMP="$VENV/.installed"
if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml && "$STAMP" -nt "$0" ]]; then
    exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 timm einops
# LXT (the AttnLRP reference implementation) for the ViT parity test; its 2.1 release needs transformers < 5.
"$VENV/bin/pip" install -q lxt==2.1 "transformers<5"
"$VENV/bin/pip" install -q numpy nibabel pydicom typer rich matplotlib isal pillow scikit-learn pytest
"$VENV/bin/pip" install -q --no-deps -e .
touch "$STAMP"
