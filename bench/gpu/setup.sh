#!/bin/bash
# Source on the GPU machine, from the repository root, with .gpu/ carried (bench/gpu/prepare.sh):
#   source .gpu/run.sh && python3 -m bench.retrain --timing-only --model /tmp/minilm ...
# Results go to $OUT (the device tool's folder that comes back).
S=/tmp/site
[ -d $S/datasets ] || python3 -m pip install -q --no-index --no-deps --no-compile --target $S .gpu/whl/*.whl || return 1
export PYTHONPATH=$S:. ECREC_SHARED_DATA=$PWD/.gpu/data ECREC_BENCH_RESULTS=$OUT PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ ! -f /tmp/minilm/model.safetensors ]; then
  mkdir -p /tmp/minilm && cp -r .gpu/minilm/. /tmp/minilm/ && python3 - <<'PY'
import lzma
from safetensors.torch import load, save_file
raw = lzma.open("/tmp/minilm/model.safetensors.xz").read()
save_file({k: v.float() for k, v in load(raw).items()}, "/tmp/minilm/model.safetensors")
PY
  rm -f /tmp/minilm/model.safetensors.xz
fi
nvidia-smi -L; python3 -c "import torch, sentence_transformers as s; print(torch.__version__, s.__version__)"
