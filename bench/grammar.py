#!/usr/bin/env python3
"""bench/grammar.py: grammar compile and mask costs over the structured-output test
corpus (tests/integration/test_structured.py CORPUS, 50+ schemas) on the default
model's vocabulary (Gemma 3, 262k tokens), via build/bin/gr_bench.

Prints gr_bench's table: per schema the compile time and the per-step mask time
(p50, p99, max) over random walks through the grammar, then the totals.
Usage: .venv/bin/python bench/grammar.py [--walks 4] [--steps 200]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gr-bench", default=str(REPO / "build" / "bin" / "gr_bench"))
    ap.add_argument("--model", default=os.path.join(
        os.environ.get("KOLM_HOME", os.path.expanduser("~/.kolm")), "models", "gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--walks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    from test_structured import CORPUS  # the schemas the tests validate outputs against

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for c in CORPUS:
            f.write(json.dumps(c.schema) + "\n")
        path = f.name
    try:
        print(f"{len(CORPUS)} schemas from tests/integration/test_structured.py")
        return subprocess.call([args.gr_bench, args.model, path, str(args.walks), str(args.steps)])
    finally:
        os.unlink(path)


if __name__ == "__main__":
    sys.exit(main())
