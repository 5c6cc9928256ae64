"""``EmbeddingIndex``: a gallery of embedded items, searchable from any modality.

    index = EmbeddingIndex.build(model, read_items("stamps/"))      # embeds every modality
    index.save("stamps_index")
    index = EmbeddingIndex.load("stamps_index", model)               # refuses another model
    index.search(target=..., k=5, text="a red car")                  # [[(key, score), ...]]

Design decisions:
- one gallery per modality (its keys and (N, D) float32 embeddings); a query of one modality is
  searched against the gallery of another (or the same) modality;
- the gallery remembers the identity of the model that embedded it (a hash of its weights and of
  the options that decide its processing): queries from any other model are refused, since
  embeddings of two models share no space;
- two ways to score (``mode``): ``embedding`` compares the query's embedding with the gallery's;
  ``predicted`` first predicts the gallery modality's pooled embedding from the query through the
  model's predictor (its ``pooled`` objective), as VL-JEPA does, and compares that;
- exact search (a matrix product and top-k, in chunks) by default; for large galleries a faiss
  index (``flat``, ``hnsw`` or ``ivf``; ``pip install faiss-cpu``) behind the same call, saved
  beside the embeddings so that it is built once;
- on disk: ``gallery.json`` (identity, model, counts, backend, sha256 of the next two files),
  ``embeddings.safetensors`` (one tensor per modality), ``keys.json`` and, for faiss,
  ``faiss-<modality>.index``; loading refuses a gallery whose files no longer match its checksums,
  counts or identity (edited, truncated, or mixed from two galleries).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..processing import MMJepaProcessor
from .items import embed_items

FORMAT, VERSION = "mmjepa-gallery", 1
BACKENDS = ("exact", "flat", "hnsw", "ivf")
MODES = ("embedding", "predicted")
CHECKED_FILES = ("embeddings.safetensors", "keys.json")  # their sha256 is in gallery.json, verified on load


def model_identity(model: Any) -> str:
    """A hash of everything that decides a model's embeddings: its weights (every tensor of the
    state dict, names included) and the options of its modalities (sizes, normalisation, the
    tokenizer's vocabulary fingerprint — not where files lie)."""
    h = hashlib.blake2b(digest_size=16)
    options = {m: {k: v for k, v in model.config.modality_config(m).__dict__.items() if k != "tokenizer"}
               for m in model.modality_names}
    h.update(json.dumps([model.config.hidden_size, options], sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        files = ", ".join(("gallery.json",) + CHECKED_FILES)
        raise FileNotFoundError(f"{path}: missing; a gallery folder holds {files}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def _faiss() -> Any:
    try:
        import faiss  # optional: only galleries with a faiss backend need it
    except ImportError:
        raise ImportError("this backend needs faiss: pip install faiss-cpu (or mmjepa[retrieval])") from None
    return faiss


class _Exact:
    """Inner-product top-k by matrix products over chunks of the gallery."""

    def __init__(self, x: torch.Tensor, chunk: int = 65536):
        self.x, self.chunk = x.float(), chunk

    def search(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(k, len(self.x))
        best_s, best_i = None, None
        for start in range(0, len(self.x), self.chunk):
            s = q.float() @ self.x[start:start + self.chunk].T  # (Q, C)
            s, i = s.topk(min(k, s.shape[1]), dim=1)
            i = i + start
            if best_s is not None:
                s, j = torch.cat([best_s, s], 1).topk(k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_s, best_i = s, i
        return best_s, best_i


class _Faiss:
    """A faiss inner-product index: ``flat`` (exact), ``hnsw`` (graph; ``m``, ``ef_search``) or
    ``ivf`` (inverted lists; ``nlist`` default 4 sqrt(N), ``nprobe``)."""

    def __init__(self, x: torch.Tensor | None, kind: str, m: int = 32, ef_construction: int = 80, ef_search: int = 64,
                 nlist: int | None = None, nprobe: int = 16, index: Any = None):
        faiss = _faiss()
        self.kind = kind
        if index is None:
            xs = np.ascontiguousarray(x.float().numpy())
            d = xs.shape[1]
            if kind == "flat":
                index = faiss.IndexFlatIP(d)
            elif kind == "hnsw":
                index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = ef_construction
            else:
                nlist = nlist or max(1, min(int(4 * math.sqrt(len(xs))), len(xs) // 39))
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
                index.train(xs)
            index.add(xs)
        self.index = index
        self.configure(ef_search=ef_search, nprobe=nprobe)

    def configure(self, ef_search: int | None = None, nprobe: int | None = None, **_: Any) -> None:
        """Set the search-time options (build-time ones are ignored here)."""
        if self.kind == "hnsw" and ef_search is not None:
            self.index.hnsw.efSearch = ef_search
        if self.kind == "ivf" and nprobe is not None:
            self.index.nprobe = nprobe

    def search(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(k, self.index.ntotal)
        s, i = self.index.search(np.ascontiguousarray(q.float().numpy()), k)
        return torch.from_numpy(s), torch.from_numpy(i)


class EmbeddingIndex:
    """Galleries of embedded items (one per modality) and the identity of the model that made them.

    ``backend``: ``exact`` (default) or a faiss index ``flat`` / ``hnsw`` / ``ivf``;
    ``backend_options`` go to it (``m``, ``ef_search``, ``nlist``, ``nprobe``). Attach a model
    (``model=`` or :meth:`attach`) to search with raw queries; :meth:`search_embeddings` takes
    embeddings made by the same model.
    """

    def __init__(self, embeddings: dict[str, torch.Tensor], keys: dict[str, list[str]], identity: str,
                 model_ref: str | None = None, backend: str = "exact", backend_options: dict[str, Any] | None = None,
                 use_target: bool = True, model: Any = None, labels: dict[str, list[int | None]] | None = None,
                 _faiss_indexes: dict[str, Any] | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        for m, e in embeddings.items():
            if e.dim() != 2 or len(e) != len(keys.get(m, ())):
                raise ValueError(f"{m}: {tuple(e.shape)} embeddings for {len(keys.get(m, ()))} keys")
        self.embeddings = {m: e.float().contiguous() for m, e in embeddings.items() if len(e)}
        self.keys = {m: list(keys[m]) for m in self.embeddings}
        self.labels = {m: list((labels or {}).get(m) or [None] * len(self.keys[m])) for m in self.embeddings}
        self.identity, self.model_ref, self.use_target = identity, model_ref, use_target
        self.backend, self.backend_options = backend, dict(backend_options or {})
        self._search: dict[str, Any] = {}
        for m, e in self.embeddings.items():
            if backend == "exact":
                self._search[m] = _Exact(e)
            else:
                self._search[m] = _Faiss(e, backend, index=(_faiss_indexes or {}).get(m), **self.backend_options)
        self.model, self.processor = None, None
        if model is not None:
            self.attach(model)

    # ------------------------------------------------------------------ building and storing
    @classmethod
    def build(cls, model: Any, items: Iterable[dict[str, Any]], modalities: Sequence[str] | None = None,
              batch_size: int = 64, use_target: bool = True, backend: str = "exact",
              backend_options: dict[str, Any] | None = None, progress: bool = True, model_ref: str | None = None,
              total: int | None = None) -> "EmbeddingIndex":
        """Embed ``items`` (raw items, see :mod:`mmjepa.retrieval.items`) with ``model``."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        done = embed_items(model, items, modalities, batch_size, use_target, progress, total)
        if not any(len(e) for e in done.embeddings.values()):
            raise ValueError(f"no item held any of the modalities {list(done.embeddings)} "
                             f"({done.items} read, {done.skipped} skipped)")
        index = cls(done.embeddings, done.keys, model_identity(model),
                    model_ref or getattr(model.config, "_name_or_path", None) or None, backend, backend_options,
                    use_target, model, done.labels)
        index.stats = {"items": done.items, "skipped": done.skipped, "dropped": done.dropped}
        return index

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(dict(self.embeddings), str(path / "embeddings.safetensors"), metadata={"identity": self.identity})
        (path / "keys.json").write_text(json.dumps({"keys": self.keys, "labels": self.labels}))
        checksums = {name: _sha256(path / name) for name in CHECKED_FILES}
        if self.backend != "exact":
            faiss = _faiss()
            for m, s in self._search.items():
                faiss.write_index(s.index, str(path / f"faiss-{m}.index"))
        meta = {"format": FORMAT, "version": VERSION, "identity": self.identity, "model": self.model_ref,
                "use_target": self.use_target, "backend": self.backend, "backend_options": self.backend_options,
                "modalities": {m: {"count": len(e), "dim": e.shape[1]} for m, e in self.embeddings.items()},
                "checksums": checksums, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (path / "gallery.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, model: Any = None, **backend_options: Any) -> "EmbeddingIndex":
        """A saved gallery; ``model`` (checked against the gallery's identity) lets it take raw
        queries; ``backend_options`` change search-time options (``ef_search``, ``nprobe``)."""
        path = Path(path)
        if not (path / "gallery.json").is_file():
            raise FileNotFoundError(f"{path} is not a gallery written by `mmjepa embed` (no gallery.json)")
        meta = _read_json(path / "gallery.json")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("version"), int) \
                or meta["version"] > VERSION:
            kind = meta.get("format") if isinstance(meta, dict) else meta
            raise ValueError(f"{path}: unknown gallery format {kind!r}")
        if not isinstance(meta.get("identity"), str) or meta.get("backend") not in BACKENDS:
            raise ValueError(f"{path}/gallery.json: no model identity or an unknown backend; not a gallery of mmjepa")
        for name, digest in (meta.get("checksums") or {}).items():  # galleries before checksums: none to verify
            if name not in CHECKED_FILES:
                raise ValueError(f"{path}/gallery.json: checksum of an unexpected file {name!r}")
            if not (path / name).is_file() or _sha256(path / name) != digest:
                raise ValueError(f"{path}/{name} does not match the checksum in gallery.json: the gallery was modified "
                                 "or damaged after it was saved; embed it again")
        try:
            emb = load_file(str(path / "embeddings.safetensors"))
            with safe_open(str(path / "embeddings.safetensors"), "pt") as f:
                stored_identity = (f.metadata() or {}).get("identity")
        except (OSError, RuntimeError, ValueError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{path}/embeddings.safetensors is not readable as safetensors ({reason})") from None
        if stored_identity != meta["identity"]:
            raise ValueError(f"{path}: embeddings.safetensors was written by another model than gallery.json names "
                             f"({str(stored_identity)[:12]} vs {meta['identity'][:12]})")
        stored = _read_json(path / "keys.json")
        keys = stored.get("keys") if isinstance(stored, dict) else None
        if not isinstance(keys, dict) or not all(isinstance(k, list) and all(isinstance(x, str) for x in k)
                                                 for k in keys.values()):
            raise ValueError(f"{path}/keys.json must hold {{\"keys\": {{modality: [key, ...]}}}}")
        counts = {m: v.get("count") for m, v in (meta.get("modalities") or {}).items() if isinstance(v, dict)}
        for m in sorted(set(emb) | set(keys) | set(counts)):
            n_emb, n_keys = len(emb[m]) if m in emb else None, len(keys[m]) if m in keys else None
            if not n_emb == n_keys == counts.get(m, n_keys):
                raise ValueError(f"{path}: {m} has {n_keys} keys in keys.json, {n_emb} embeddings and "
                                 f"{counts.get(m)} items in gallery.json; the gallery was modified after it was saved")
        faiss_idx = None
        if meta["backend"] != "exact":
            faiss = _faiss()
            faiss_idx = {m: faiss.read_index(str(path / f"faiss-{m}.index")) for m in emb}
        options = {**meta.get("backend_options", {}), **backend_options}
        return cls(emb, keys, meta["identity"], meta.get("model"), meta["backend"], options,
                   meta.get("use_target", True), model, stored.get("labels"), faiss_idx)

    # ------------------------------------------------------------------ searching
    def attach(self, model: Any) -> "EmbeddingIndex":
        """Use ``model`` for queries; refused unless it is the model that embedded the gallery."""
        ident = model_identity(model)
        if ident != self.identity:
            raise ValueError(f"this gallery was embedded by another model (identity {self.identity[:12]}, "
                             f"{self.model_ref or 'unknown'}); the given model is {ident[:12]}: embed the gallery "
                             "again with it, or load the model that made it")
        self.model = model.eval()
        self.processor = MMJepaProcessor.from_config(model.config)
        return self

    def configure(self, **options: Any) -> "EmbeddingIndex":
        """Change search-time options of a faiss backend in place (``ef_search``, ``nprobe``)."""
        self.backend_options.update(options)
        if self.backend != "exact":
            for s in self._search.values():
                s.configure(**options)
        return self

    def _target(self, target: str | None) -> str:
        if target is None:
            if len(self.embeddings) != 1:
                raise ValueError(f"this gallery holds {sorted(self.embeddings)}: choose the one to search with "
                                 f"target= (on the command line: --target {sorted(self.embeddings)[0]})")
            return next(iter(self.embeddings))
        if target not in self.embeddings:
            raise ValueError(f"this gallery has no {target!r} items (it has {sorted(self.embeddings)})")
        return target

    def search_embeddings(self, queries: torch.Tensor, target: str | None = None, k: int = 10,
                          identity: str | None = None) -> list[list[tuple[str, float]]]:
        """Queries (Q, D), L2-normalised, made by this gallery's model (pass its ``identity`` to
        have it checked) -> per query the top-``k`` (key, score) of gallery ``target``."""
        if identity is not None and identity != self.identity:
            raise ValueError(f"these queries were embedded by another model ({identity[:12]}); the gallery's is "
                             f"{self.identity[:12]}")
        target = self._target(target)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int >= 1, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if isinstance(queries, np.ndarray):
            queries = torch.from_numpy(queries) if queries.dtype.kind in "fiu" else queries
        if not isinstance(queries, torch.Tensor):
            raise TypeError(f"queries must be a (Q, D) float tensor or array, got {type(queries).__name__}")
        if not (queries.is_floating_point() or queries.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                                 torch.uint8)):
            raise TypeError(f"queries must be a (Q, D) float tensor, got dtype {queries.dtype}")
        if queries.dim() == 1:
            queries = queries[None]
        width = self.embeddings[target].shape[1]
        if queries.dim() != 2 or queries.shape[1] != width:
            raise ValueError(f"queries must have shape (Q, {width}) for this gallery, got {tuple(queries.shape)}")
        if not bool(torch.isfinite(queries).all()):
            raise ValueError("queries hold NaN or infinite values")
        if len(queries) == 0:
            return []
        scores, idx = self._search[target].search(queries.detach().float().cpu(), k)
        keys = self.keys[target]
        return [[(keys[int(i)], float(s)) for s, i in zip(srow, irow) if int(i) >= 0]
                for srow, irow in zip(scores, idx)]

    def embed_queries(self, target: str, mode: str = "embedding", **inputs: Any) -> torch.Tensor:
        """Raw queries (``text=``, ``images=``, ``audio=`` ... as the processor takes them) ->
        (Q, D): their embedding (``mode="embedding"``, exactly one query modality) or, with
        ``mode="predicted"``, ``target``'s embedding predicted from them (any query modalities)."""
        if self.model is None:
            raise ValueError("no model attached: EmbeddingIndex.load(path, model) or index.attach(model)")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        batch = self.processor(**{k: v for k, v in inputs.items() if v is not None})
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if mode == "predicted":
            return self.model.predict_embedding(target, **batch).float().cpu()
        emb = self.model.embed(use_target=self.use_target, **batch)
        if len(emb) != 1:
            raise ValueError(f"give queries of one modality (got {sorted(emb)}), or use mode='predicted'")
        return next(iter(emb.values())).float().cpu()

    def search(self, target: str | None = None, k: int = 10, mode: str = "embedding",
               **inputs: Any) -> list[list[tuple[str, float]]]:
        """Top-``k`` (key, score) of gallery ``target`` for each query, given by the processor's
        keywords: ``text=`` (a string or a list), ``images=`` (paths, PIL images, arrays), ``audio=``
        (paths or arrays, with ``sampling_rate=``), or another modality plug-in's keyword. A single
        string or path is one query."""
        target = self._target(target)
        inputs = {k_: [v] if isinstance(v, (str, Path)) else v for k_, v in inputs.items() if v is not None}
        return self.search_embeddings(self.embed_queries(target, mode, **inputs), target, k)

    def __len__(self) -> int:
        return sum(len(k) for k in self.keys.values())

    def __repr__(self) -> str:
        sizes = ", ".join(f"{m}: {len(k)}" for m, k in self.keys.items())
        return f"EmbeddingIndex({sizes}; backend={self.backend}, model={self.model_ref}, identity={self.identity[:12]})"
