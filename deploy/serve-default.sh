#!/usr/bin/env bash
# deploy/serve-default.sh: set everything up (deploy/setup.sh), pack the embedded
# default model into a signed artifact (a signing key is made on first run), then
# serve it on port ${PORT:-8765} (OpenAI base_url http://localhost:8765/v1).
# With arguments, they replace the default artifact: `deploy/serve-default.sh my.kolm`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/deploy/setup.sh"
KOLM="${KOLM_BUILD_DIR:-$REPO/build}/bin/kolm"
KOLM_HOME="${KOLM_HOME:-$HOME/.kolm}"
export KOLM_HOME
if [ "$#" -eq 0 ]; then
    ART="$KOLM_HOME/artifacts/gemma-3-270m-q4_k_m.kolm"
    if [ ! -f "$ART" ]; then
        [ -f "$KOLM_HOME/keys/default.key" ] || "$KOLM" keygen
        mkdir -p "$KOLM_HOME/artifacts"
        # --reference: the weights are stored once in the model store, by CID.
        "$KOLM" pack "$KOLM_HOME/models/gemma-3-270m-q4_k_m.gguf" --reference -o "$ART"
    fi
    set -- "$ART"
fi
exec "$KOLM" serve --http --port "${PORT:-8765}" "$@"
