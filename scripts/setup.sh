#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project into it. Sourced by run.sh and test.sh.
# Usage: source scripts/setup.sh [EXTRA]   (EXTRA: test)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RAG_VENV:-$ROOT/.venv}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
extra="${1:-}"
# torch runs the bfloat16 document encoder of ingest (and, in the tests, sentence-transformers,
# which our MiniLM is checked against). Pinned: the CPU build; an unpinned torch pulls a
# multi-GB CUDA build.
"$VENV/bin/pip" install -q "torch==2.13.0"
if [ "$extra" = "test" ]; then
  "$VENV/bin/pip" install -q -e "$ROOT[test]"
else
  "$VENV/bin/pip" install -q -e "$ROOT[ui,eval,fast]"
fi
export PATH="$VENV/bin:$PATH"
