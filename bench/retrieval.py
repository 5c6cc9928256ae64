"""Search speed and recall of a gallery's backends on a large synthetic gallery.

``mmjepa bench retrieval --json PATH`` (defaults: 100,000 items of width 256, 1,000 queries)

The gallery imitates a trained embedding space rather than uniform noise (where every neighbour
is equally far and approximate indexes look their worst): unit vectors around ``--clusters``
random centres, spread so that clusters overlap (``--spread`` 1.5: a query's best match scores about
0.40 and its tenth about 0.31, as in a trained space, where neighbours are close but not
separable); queries are new draws from the same clusters. For each backend of :class:`mmjepa.retrieval.EmbeddingIndex`
— exact search (a matrix product in chunks) and faiss ``flat``, ``hnsw`` and ``ivf`` at a few
search settings — it reports the build time, queries per second (batches of ``--batch``
queries, and one query at a time) and recall@10 against exact search (the share of the exact top
10 found in the backend's top 10). Every backend runs on the same threads (``--threads``; 1 by
default, the fair comparison on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from typing import Any

import torch

from mmjepa.retrieval import EmbeddingIndex

SETTINGS = [("exact", {}), ("flat", {}), ("hnsw", {"ef_search": 32}), ("hnsw", {"ef_search": 64}),
            ("hnsw", {"ef_search": 128}), ("ivf", {"nprobe": 8}), ("ivf", {"nprobe": 32}), ("ivf", {"nprobe": 128})]


def synthetic_gallery(n: int, dim: int, clusters: int, n_queries: int, spread: float = 1.5,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, dim) unit vectors around ``clusters`` random centres, and (n_queries, dim) queries."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, dim, generator=g), dim=-1)

    def draw(k: int) -> torch.Tensor:
        c = centres[torch.randint(0, clusters, (k,), generator=g)]
        return torch.nn.functional.normalize(c + spread * torch.randn(k, dim, generator=g) / math.sqrt(dim), dim=-1)

    return draw(n), draw(n_queries)


def _timed(fn, repeats: int = 3) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    try:
        import faiss  # optional dependency: the faiss rows need it

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        raise ImportError("this benchmark compares faiss indexes: pip install faiss-cpu (or mmjepa[retrieval])") from None
    x, q = synthetic_gallery(args.items, args.dim, args.clusters, args.queries, args.spread, args.seed)
    keys = {"item": [str(i) for i in range(len(x))]}
    res: dict[str, Any] = {"items": args.items, "dim": args.dim, "queries": args.queries, "clusters": args.clusters,
                           "spread": args.spread,
                           "threads": args.threads, "k": args.k, "batch": args.batch, "machine": platform.processor()
                           or platform.machine(), "faiss_version": faiss.__version__, "torch_version": torch.__version__,
                           "date": time.strftime("%Y-%m-%d"), "rows": []}
    truth = None
    built: dict[str, EmbeddingIndex] = {}
    for backend, opts in SETTINGS:
        if backend not in built:
            t0 = time.perf_counter()
            built[backend] = EmbeddingIndex({"item": x}, keys, "bench", backend=backend)
            build_s = time.perf_counter() - t0
        else:
            build_s = None
        index = built[backend].configure(**opts)  # search-time options on the built index

        def batched() -> list:
            out = []
            for s in range(0, len(q), args.batch):
                out += index.search_embeddings(q[s:s + args.batch], k=args.k)
            return out

        batch_s, found = _timed(batched)
        single = q[: args.single]
        one_s, _ = _timed(lambda: [index.search_embeddings(single[i:i + 1], k=args.k) for i in range(len(single))], 1)
        top = [{k for k, _ in r} for r in found]
        if truth is None:
            truth = top  # exact search comes first
        recall = sum(len(a & b) for a, b in zip(top, truth)) / (args.k * len(truth))
        row = {"backend": backend, **opts, "build_s": build_s, "recall_at_k": recall,
               "qps_batched": len(q) / batch_s, "qps_single": len(single) / one_s}
        res["rows"].append(row)
        print(f"{backend:6s} {json.dumps(opts):22s} build {'' if build_s is None else f'{build_s:7.1f} s':9s} "
              f"recall@{args.k} {recall:.4f}  {row['qps_batched']:9.0f} q/s batched  {row['qps_single']:8.0f} q/s single",
              flush=True)
    exact = res["rows"][0]
    for row in res["rows"]:
        row["speedup_batched"] = row["qps_batched"] / exact["qps_batched"]
        row["speedup_single"] = row["qps_single"] / exact["qps_single"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


def run(args: argparse.Namespace) -> int:
    measure(args)
    return 0
