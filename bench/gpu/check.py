"""GPU-path agreement on a CUDA machine: the pre-tokenised bf16 encoding against
``SentenceTransformer.encode`` in fp32 (Instacart product names), and the CUDA top-k of an
``EmbeddedCatalog`` against its numpy top-k.

    source .gpu/run.sh && python3 -m bench.gpu.check [/tmp/minilm]
"""

from __future__ import annotations

import sys

import numpy as np
from sentence_transformers import SentenceTransformer

from bench.common import instacart_titles
from ecrec_stream.embedding import encode_pretokenised
from ecrec_stream.training.evaluate import EmbeddedCatalog


def main() -> None:
    titles = instacart_titles()
    model = SentenceTransformer(sys.argv[1] if len(sys.argv) > 1 else "/tmp/minilm", device="cuda")
    ref = model.encode(titles, batch_size=256, normalize_embeddings=True)
    got = encode_pretokenised(model, titles, 1024)
    cos = (ref * got).sum(1)
    print(
        f"pretokenised bf16 vs encode fp32 on {len(titles)} titles: min cosine {cos.min():.5f}, "
        f"mean {cos.mean():.6f}, max abs diff {np.abs(ref - got).max():.4f}"
    )
    ids = [str(i) for i in range(len(titles))]
    cpu = EmbeddedCatalog("v", ids, ref).top_k(ref[:500], 10)
    gpu = EmbeddedCatalog("v", ids, ref, "cuda").top_k(ref[:500], 10)
    pairs = list(zip(cpu, gpu, strict=True))
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in pairs])
    first = np.mean([a[0] == b[0] for a, b in pairs])
    print(f"top-10 overlap cuda vs numpy: {overlap:.4f}, same first result {first:.4f}")


if __name__ == "__main__":
    main()
