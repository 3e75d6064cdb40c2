#!/usr/bin/env bash
# Installs everything into .venv and runs the main job. The index is built on first use.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
if [ "$#" -gt 0 ]; then
  exec rag "$@"
fi
exec rag ask "Which papers study the Lion optimizer, and what do they find?"
