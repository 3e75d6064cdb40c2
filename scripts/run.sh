#!/usr/bin/env bash
# Installs everything into .venv and runs the main job, the chat UI. `run.sh ARGS` runs `rag ARGS`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
if [ "$#" -gt 0 ]; then
  exec rag "$@"
fi
# The chat UI on http://127.0.0.1:7860 (builds the index first if there is none).
exec rag serve
