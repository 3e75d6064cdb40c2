#!/usr/bin/env bash
# Installs the project with its test dependencies into .venv and runs the test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" test
cd "$ROOT"
exec python -m pytest "$@"
