#!/usr/bin/env bash
# deploy/serve-default.sh: set everything up (deploy/setup.sh), then serve the
# embedded default model on port ${PORT:-8765} (OpenAI base_url http://localhost:8765/v1).
# With arguments, they replace the default model: `deploy/serve-default.sh my.gguf`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/deploy/setup.sh"
if [ "$#" -eq 0 ]; then
    set -- "${KOLM_HOME:-$HOME/.kolm}/models/gemma-3-270m-q4_k_m.gguf"
fi
exec "${KOLM_BUILD_DIR:-$REPO/build}/bin/kolm" serve --http --port "${PORT:-8765}" "$@"
