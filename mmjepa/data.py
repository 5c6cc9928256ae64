"""The input pipeline: raw samples -> decoded, processed, masked batches, as a list of stages.

One process (rank) of a run reads its share of the data; each DataLoader worker of that process
plays one *role*. Per role the stages are::

    sources   shards: shard list -> split by node -> split by worker -> tar samples -> shuffle
              builtin: in-memory samples, permuted per epoch, assigned by global batch
              hf: datasets streaming, split_dataset_by_node, binary (undecoded) media columns
    mix       several sources drawn by weight
    skip      fast-forward to the resume position (before any decoding)
    decode    PIL for jpg/png/webp, soundfile for wav/flac/ogg/mp3, utf-8 for txt, json
    rename    file extensions -> modality keys (image / audio / text)
    process   each modality's processor (built from the model config) on one sample
    batch     B good samples -> MaskCollator (per-modality collate + masks) -> one batch

Everything is a pure function of (seed, epoch, rank, world size, role, batch index), which gives:

- exact resume: a checkpoint stores the epoch, the next batch and, per role, how many raw samples
  were read; a resumed run fast-forwards each role without decoding and sees the very same
  batches and masks (masks are drawn from a generator seeded per batch);
- equal batch counts on every rank: an epoch is ``n = samples // (world_size * batch_size)``
  batches per rank, and each role's stream repeats (or resamples) its shards as needed, so uneven
  shards never leave one rank waiting for the others at the end of an epoch;
- the loader is *not* passed through ``accelerator.prepare``: splitting is done here, once.

Bad samples (undecodable, missing a modality, rejected by a processor) are skipped, counted per
batch (``DataStream.skipped``) and reported with their key; ``on_error: raise`` makes them fatal.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .masking import MaskCollator

logger = logging.getLogger(__name__)

SOURCE_TYPES = ("shards", "hf", "builtin")
DEFAULT_KEYS = {"image": "jpg;jpeg;png;webp", "audio": "wav;flac;ogg;mp3", "text": "txt"}
IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "bmp", "gif"}
AUDIO_EXTS = {"wav", "flac", "ogg", "mp3"}


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and Python runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


# ----------------------------------------------------------------------------- configuration
@dataclass
class SourceConfig:
    """One data source of a recipe's ``data.sources`` list.

    - ``shards``: ``urls`` = a brace pattern (``/data/in-{000000..000099}.tar``), a list of urls, or
      a folder / ``manifest.json`` written by ``mmjepa shards`` (sample counts come from it);
    - ``hf``: ``path`` = a dataset on the Hub or a local folder, or ``webdataset`` with ``urls`` as
      its data files; ``name`` = its configuration; streamed;
    - ``builtin``: ``name`` = a dataset of :func:`mmjepa.datasets.load_builtin` (in memory).
    """

    type: str = "shards"
    urls: str | list[str] | None = None
    path: str | None = None
    name: str | None = None
    split: str = "train"
    weight: float = 1.0
    num_samples: int | None = None  # samples in the source, when there is no manifest
    resampled: bool = False  # draw shards with replacement (shards / hf) instead of splitting them

    def __post_init__(self):
        if self.type not in SOURCE_TYPES:
            raise ValueError(f"type must be one of {SOURCE_TYPES}, got {self.type!r}")
        if self.type == "shards" and not self.urls:
            raise ValueError("a 'shards' source needs urls (a pattern, a list, or a manifest folder)")
        if self.type == "builtin" and not self.name:
            raise ValueError("a 'builtin' source needs a name (e.g. digits)")
        if self.type == "hf" and not (self.path or self.urls):
            raise ValueError("an 'hf' source needs a path (dataset name/folder) or urls (webdataset files)")
        if not self.weight > 0:
            raise ValueError(f"weight must be > 0, got {self.weight}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")


@dataclass
class DataConfig:
    """The ``data`` section of a recipe."""

    sources: list[SourceConfig] = field(default_factory=list)
    batch_size: int = 64  # per process (the global batch is batch_size * processes * grad_accum)
    num_workers: int = 2
    shuffle_buffer: int = 1000  # samples; 0 turns shuffling off
    shuffle: bool = True
    seed: int = 0
    epoch_samples: int | None = None  # samples per epoch (default: the sum over sources)
    keys: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_KEYS))  # modality <- extensions
    on_error: str = "skip"  # "skip" (count and warn) or "raise"
    prefetch_factor: int = 4

    def __post_init__(self):
        if not self.sources:
            raise ValueError("sources must list at least one source")
        self.sources = [s if isinstance(s, SourceConfig) else SourceConfig(**s) for s in self.sources]
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")
        if self.epoch_samples is not None and self.epoch_samples < 1:
            raise ValueError(f"epoch_samples must be >= 1, got {self.epoch_samples}")
        if self.prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {self.prefetch_factor}")
        self.keys = {**DEFAULT_KEYS, **dict(self.keys)}


@dataclass
class Role:
    """Who is reading: process ``rank`` of ``world``, worker role ``role`` of ``num_roles``."""

    epoch: int
    rank: int
    world: int
    role: int
    num_roles: int
    batch_size: int
    seed: int
    shuffle: bool = True
    shuffle_buffer: int = 1000


# ----------------------------------------------------------------------------- stream stages
def compose(src: Iterable, stages: list[Callable[[Iterable], Iterable]]) -> Iterator:
    """Run ``src`` through ``stages`` (each a function iterator -> iterator), in order."""
    for stage in stages:
        src = stage(src)
    return iter(src)


def split_by_node(rank: int, world: int) -> Callable[[Iterable], Iterator]:
    return lambda src: itertools.islice(src, rank, None, world)


def split_by_worker(role: int, num_roles: int) -> Callable[[Iterable], Iterator]:
    return lambda src: itertools.islice(src, role, None, num_roles)


def shuffle_stage(size: int, rng: random.Random) -> Callable[[Iterable], Iterator]:
    """A shuffle buffer of ``size`` samples (deterministic for a given ``rng``)."""

    def run(src: Iterable) -> Iterator:
        if size <= 1:
            yield from src
            return
        buf: list = []
        for x in src:
            if len(buf) < size:
                buf.append(x)
                continue
            i = rng.randrange(size)
            buf[i], x = x, buf[i]
            yield x
        rng.shuffle(buf)
        yield from buf

    return run


def mix(streams: list[Iterator], weights: list[float], rng: random.Random) -> Iterator:
    """Draw the next sample from stream i with probability weights[i] / sum(weights)."""
    if len(streams) == 1:
        yield from streams[0]
        return
    while True:
        i = rng.choices(range(len(streams)), weights=weights)[0]
        yield next(streams[i])


class Counter:
    """Counts the items pulled through :meth:`wrap` (the raw position of a role's stream)."""

    def __init__(self, start: int = 0):
        self.n = start

    def wrap(self, src: Iterable) -> Iterator:
        for x in src:
            self.n += 1
            yield x


# ----------------------------------------------------------------------------- sources
def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace patterns (``a-{000..009}.tar``) and ``::``-joined lists -> a list of urls."""
    import braceexpand  # a dependency of webdataset

    items = urls if isinstance(urls, (list, tuple)) else str(urls).split("::")
    out: list[str] = []
    for u in items:
        out.extend(braceexpand.braceexpand(str(u)))
    return out


def _open_manifest(urls: str | list[str]) -> dict | None:
    """The manifest of ``mmjepa shards`` when ``urls`` names a folder holding one or the file itself."""
    from pathlib import Path

    from .shards import MANIFEST, read_manifest

    if isinstance(urls, str) and "{" not in urls and "::" not in urls:
        p = Path(urls)
        if (p.is_dir() and (p / MANIFEST).exists()) or (p.is_file() and p.suffix == ".json"):
            return read_manifest(p)
    return None


class BuiltinSource:
    """In-memory samples (:func:`mmjepa.datasets.load_builtin`, or any list of sample dicts).

    Per epoch the samples are permuted (one permutation for every rank) and cut into global batches
    of ``world * batch_size``; rank r takes rows ``[r*B, (r+1)*B)`` of each. So the union of the
    ranks' batches equals the batch of one process with ``world * batch_size`` samples.
    """

    def __init__(self, items: list[dict[str, Any]], name: str = "list"):
        if not items:
            raise ValueError(f"builtin source {name!r} is empty")
        self.items = items
        self.name = name
        self.num_samples = len(items)

    def role_stream(self, r: Role, tag: int) -> Iterator[dict[str, Any]]:
        B, W = r.batch_size, r.world
        n = len(self.items)

        def positions() -> Iterator[int]:  # the global stream: pass after pass
            for p in itertools.count():
                if r.shuffle:
                    g = torch.Generator().manual_seed(derive_seed(r.seed, "perm", tag, r.epoch, p))
                    yield from torch.randperm(n, generator=g).tolist()
                else:
                    yield from range(n)

        # global batch g holds positions [g*W*B, (g+1)*W*B); this rank's part of it is rank batch g,
        # owned by role g % num_roles
        it = positions()
        for g in itertools.count():
            chunk = list(itertools.islice(it, W * B))[r.rank * B : (r.rank + 1) * B]
            if g % r.num_roles == r.role:
                for i in chunk:
                    yield dict(self.items[i])


class ShardSource:
    """WebDataset tar shards: shard list -> split by node -> split by worker -> samples -> shuffle.

    The shard order is reshuffled (identically on every rank) at each pass; a role that runs out
    of shards starts a new pass, so every role can deliver any number of batches. With
    ``resampled`` each role draws shards with replacement instead (no split, never runs dry).
    """

    def __init__(self, cfg: SourceConfig, handler: Callable[[Exception], bool]):
        self.cfg = cfg
        self.handler = handler
        manifest = _open_manifest(cfg.urls)
        if manifest is not None:
            self.urls = [s["url"] for s in manifest["shards"]]
            self.num_samples = cfg.num_samples or manifest["total"]
        else:
            self.urls = expand_urls(cfg.urls)
            self.num_samples = cfg.num_samples
        if not self.urls:
            raise ValueError(f"no shards in {cfg.urls!r}")
        self.name = str(cfg.urls)

    def shard_stages(self, r: Role, p: int, tag: int) -> list[Callable]:
        """The stages that pick this role's shards for pass ``p``."""
        if self.cfg.resampled:
            rng = random.Random(derive_seed(r.seed, "resample", tag, r.epoch, p, r.rank, r.role))
            k = max(1, len(self.urls) // (r.world * r.num_roles))
            return [lambda src: iter(rng.choices(list(src), k=k))]
        order_rng = random.Random(derive_seed(r.seed, "shards", tag, r.epoch, p))

        def shard_list(src):
            urls = list(src)
            if r.shuffle:
                order_rng.shuffle(urls)
            return iter(urls)

        stages = [shard_list, split_by_node(r.rank, r.world)]
        if len(self.urls) // r.world >= r.num_roles:
            stages.append(split_by_worker(r.role, r.num_roles))
        return stages

    def tar_samples(self, urls: list[str]) -> Iterator[dict[str, Any]]:
        """Samples of each shard in turn (files grouped by key); each shard is closed when left,
        also when the consumer stops early."""
        from webdataset.gopen import gopen
        from webdataset.tariterators import group_by_keys, tar_file_expander

        for url in urls:
            try:
                stream = gopen(url)
            except Exception as err:  # noqa: BLE001 - an unreadable shard is skipped and counted
                self.handler(err, url)
                continue
            with stream:
                files = tar_file_expander([{"url": url, "stream": stream}], handler=self.handler)
                yield from group_by_keys(files, handler=self.handler)

    def role_stream(self, r: Role, tag: int) -> Iterator[dict[str, Any]]:
        if not self.cfg.resampled and len(self.urls) < r.world:
            raise ValueError(
                f"{self.name}: {len(self.urls)} shard(s) cannot be split over {r.world} processes; "
                "write more shards (mmjepa shards --max-count) or set resampled: true"
            )
        sample_split = not self.cfg.resampled and len(self.urls) // r.world < r.num_roles
        if sample_split and r.role == 0 and r.epoch == 0:
            warnings.warn(f"{self.name}: fewer shards per process than workers; workers split samples "
                          "instead of shards (every worker reads all of its process's shards)")
        for p in itertools.count():
            urls = list(compose(self.urls, self.shard_stages(r, p, tag)))
            samples = self.tar_samples(urls)
            if sample_split:
                samples = split_by_worker(r.role, r.num_roles)(samples)
            if r.shuffle:
                rng = random.Random(derive_seed(r.seed, "buffer", tag, r.epoch, p, r.rank, r.role))
                samples = shuffle_stage(r.shuffle_buffer, rng)(samples)
            n = 0
            for s in samples:
                n += 1
                yield s
            if n == 0:
                raise RuntimeError(f"{self.name}: the shards of rank {r.rank} role {r.role} hold no readable sample")


class HFSource:
    """A Hugging Face dataset streamed with ``datasets`` (``load_dataset(..., streaming=True)``).

    Image/audio columns are read undecoded (binary) and decoded by this pipeline's decode stage;
    ``split_dataset_by_node`` gives each (rank, worker role) its shards.
    """

    def __init__(self, cfg: SourceConfig):
        self.cfg = cfg
        self.name = cfg.path or str(cfg.urls)
        self.num_samples = cfg.num_samples

    def _dataset(self):
        import datasets

        kwargs: dict[str, Any] = {"split": self.cfg.split, "streaming": True}
        if self.cfg.urls:
            kwargs["data_files"] = {self.cfg.split: expand_urls(self.cfg.urls)}
        ds = datasets.load_dataset(self.cfg.path or "webdataset", self.cfg.name, **kwargs)
        for col, feat in (ds.features or {}).items():  # keep media undecoded: our decode stage does it
            if isinstance(feat, (datasets.Image, datasets.Audio)):
                ds = ds.cast_column(col, type(feat)(decode=False))
        return ds

    def role_stream(self, r: Role, tag: int) -> Iterator[dict[str, Any]]:
        from datasets.distributed import split_dataset_by_node

        base = self._dataset()
        for p in itertools.count():
            ds = base
            if r.shuffle:
                ds = ds.shuffle(seed=derive_seed(r.seed, "hf", tag, r.epoch, p) % 2**32, buffer_size=1)
            if self.cfg.resampled or r.world * r.num_roles > 1:
                ds = split_dataset_by_node(ds, rank=r.rank * r.num_roles + r.role, world_size=r.world * r.num_roles)
            rows = ds.iter(batch_size=1)
            if r.shuffle:
                rng = random.Random(derive_seed(r.seed, "buffer", tag, r.epoch, p, r.rank, r.role))
                rows = shuffle_stage(r.shuffle_buffer, rng)(rows)
            n = 0
            # .iter() reads in this process: no second, automatic split by DataLoader worker
            for row in rows:
                sample = {}
                for k, v in row.items():
                    v = v[0]
                    if isinstance(v, dict) and v.get("bytes") is not None:
                        ext = (v.get("path") or "").rsplit(".", 1)[-1].lower()
                        sample[f"{k}.{ext}" if ext and k in ("image", "audio") else k] = v["bytes"]
                    else:
                        sample[k] = v
                sample.setdefault("__key__", f"{self.name}/{p}/{n}")
                n += 1
                yield sample
            if n == 0:
                raise RuntimeError(f"{self.name}: rank {r.rank} role {r.role} got no sample")


def build_source(cfg: SourceConfig, handler: Callable[[Exception], bool]):
    if cfg.type == "builtin":
        from .datasets import load_builtin

        return BuiltinSource(load_builtin(cfg.name, cfg.split), cfg.name)
    if cfg.type == "shards":
        return ShardSource(cfg, handler)
    return HFSource(cfg)


# ----------------------------------------------------------------------------- decode + process
def decode_value(ext: str, value: Any) -> Any:
    """Bytes of one field -> a Python object by its extension (other values pass through)."""
    if not isinstance(value, (bytes, bytearray)):
        return value
    ext = ext.rsplit(".", 1)[-1].lower()
    if ext in IMAGE_EXTS:
        from PIL import Image

        img = Image.open(io.BytesIO(value))
        img.load()
        return img
    if ext in AUDIO_EXTS:
        import soundfile as sf

        data, sr = sf.read(io.BytesIO(value), dtype="float32", always_2d=True)  # (n, C)
        return {"array": data.mean(1), "sampling_rate": int(sr)}
    if ext in ("txt", "text"):
        return value.decode("utf-8").strip()
    if ext == "json":
        return json.loads(value)
    if ext == "cls":
        return int(value.decode().strip())
    return value


class SampleProcessor:
    """decode -> rename -> per-modality processors, for one raw sample.

    ``keys`` maps each modality to ``;``-separated candidate field names (the modality's own name
    is always a candidate). Only the model's modalities are kept; a sample must have all of them.
    """

    def __init__(self, model_config: Any, keys: dict[str, str]):
        from .modalities import get_modality

        self.modalities = list(model_config.modalities)
        self.processors = {m: get_modality(m).build_processor(model_config.modality_config(m))
                           for m in self.modalities}
        self.candidates = {m: [m] + [k for k in keys.get(m, "").split(";") if k] for m in self.modalities}
        self.min_sizes = {}  # modality -> the smallest (H, W) worth decoding to (2x the model's input)
        for m in self.modalities:
            size = getattr(model_config.modality_config(m), "image_size", None)
            if size is not None:
                h, w = (size, size) if isinstance(size, int) else size
                self.min_sizes[m] = (2 * int(h), 2 * int(w))

    def _find(self, sample: dict[str, Any], modality: str) -> tuple[str, Any] | None:
        for cand in self.candidates[modality]:
            for k, v in sample.items():
                if k.lower() == cand or k.lower().endswith("." + cand):
                    return k, v
        return None

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"__key__": str(sample.get("__key__", ""))}
        for m in self.modalities:
            found = self._find(sample, m)
            if found is None:
                raise ValueError(f"sample has no {m} (fields: {sorted(k for k in sample if not k.startswith('__'))})")
            k, raw = found
            value = _shrink(decode_value(k, raw), self.min_sizes.get(m))
            processed = self.processors[m](value)
            for name, v in processed.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == 1:
                    v = v[0]  # the processor's batch of one
                out[name] = v
        label = sample.get("label", sample.get("cls"))
        if label is not None:
            label = decode_value("cls", label)
            if isinstance(label, int):
                out["label"] = label
        return out


def _shrink(value: Any, min_size: tuple[int, int] | None) -> Any:
    """A decoded PIL image much larger than the model input is box-reduced by an integer factor
    (keeping >= 2x the input size) before the processor's antialiased resize: same result
    quality, a fraction of the resize work for large images."""
    if min_size is None or not hasattr(value, "reduce") or not hasattr(value, "size"):
        return value
    w, h = value.size
    factor = min(h // min_size[0], w // min_size[1])
    if factor >= 2:
        if value.mode == "P":  # palette images cannot be averaged
            value = value.convert("RGBA")
        value = value.reduce(factor)
    return value


def _collate_fn(modality: Any, cfg: Any) -> Callable[[list], dict] | None:
    """A modality's ``collate(samples)`` classmethod, given the options its signature names."""
    import inspect

    fn = getattr(modality, "collate", None)
    if fn is None:
        return None
    params = list(inspect.signature(fn).parameters)[1:]
    kwargs = {p: getattr(cfg, p) for p in params if hasattr(cfg, p)}
    return lambda samples: fn(samples, **kwargs)


def build_collator(model_config: Any, seed: int = 0) -> MaskCollator:
    """The MaskCollator for ``model_config``: each modality's default mask sampler and collate."""
    from .modalities import get_modality

    samplers, collate_fns = {}, {}
    for m in model_config.modalities:
        mod, cfg = get_modality(m), model_config.modality_config(m)
        samplers[m] = (mod.input_key, mod.build_mask_sampler(cfg))
        fn = _collate_fn(mod, cfg)
        if fn is not None:
            collate_fns[m] = fn
    return MaskCollator(samplers, seed=seed, collate_fns=collate_fns)


def collate(collator: MaskCollator, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """MaskCollator, then stack pass-through tensors of equal shape (e.g. attention masks)."""
    batch = collator(samples)
    for k, v in list(batch.items()):
        if isinstance(v, list) and v and all(isinstance(x, torch.Tensor) for x in v):
            if len({tuple(x.shape) for x in v}) == 1:
                batch[k] = torch.stack(v)
    return batch


class ErrorCounter:
    """The bad-sample handler: counts, warns about the first few (with their key), or raises."""

    def __init__(self, mode: str = "skip", where: str = "", max_warnings: int = 5):
        self.mode, self.where, self.count, self.max_warnings = mode, where, 0, max_warnings

    def __call__(self, err: Exception, key: str = "?") -> bool:
        if self.mode == "raise":
            raise err
        self.count += 1
        if self.count <= self.max_warnings:
            more = " (further ones are counted, not shown)" if self.count == self.max_warnings else ""
            warnings.warn(f"skipping bad sample {key!r}{self.where}: {type(err).__name__}: {err}{more}")
        return True


# ----------------------------------------------------------------------------- the pipeline
class DataPipeline:
    """The data of one process: sources, processors and collator for a model config."""

    def __init__(self, cfg: DataConfig, model_config: Any, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.cfg = cfg
        self.model_config = model_config
        self.rank, self.world_size = rank, world_size
        self.errors = ErrorCounter(cfg.on_error, f" (rank {rank})")
        self.sources = [build_source(s, self.errors) for s in cfg.sources]
        self._processor: SampleProcessor | None = None
        self._collator: MaskCollator | None = None

    # -- epoch accounting
    @property
    def num_samples(self) -> int | None:
        """Samples per epoch: ``epoch_samples``, else the sum over sources (None when unknown)."""
        if self.cfg.epoch_samples is not None:
            return self.cfg.epoch_samples
        sizes = [s.num_samples for s in self.sources]
        return None if any(n is None for n in sizes) else sum(sizes)

    @property
    def batches_per_epoch(self) -> int | None:
        """Batches per process per epoch (equal on every rank), or None for an endless epoch."""
        n = self.num_samples
        if n is None:
            return None
        per = n // (self.world_size * self.cfg.batch_size)
        if per < 1:
            raise ValueError(f"the data has {n} samples: fewer than one global batch of "
                             f"{self.world_size} x {self.cfg.batch_size}")
        return per

    @property
    def num_roles(self) -> int:
        return max(1, self.cfg.num_workers)

    # -- per-worker pieces (built lazily, inside the worker)
    @property
    def processor(self) -> SampleProcessor:
        if self._processor is None:
            self._processor = SampleProcessor(self.model_config, self.cfg.keys)
        return self._processor

    @property
    def collator(self) -> MaskCollator:
        if self._collator is None:
            self._collator = build_collator(self.model_config, self.cfg.seed)
        return self._collator

    def role(self, epoch: int, role: int) -> Role:
        return Role(epoch, self.rank, self.world_size, role, self.num_roles, self.cfg.batch_size, self.cfg.seed,
                    self.cfg.shuffle, self.cfg.shuffle_buffer)

    def raw_stream(self, epoch: int, role: int) -> Iterator[dict[str, Any]]:
        """sources (each split, shuffled) -> mix: the raw samples of one role for one epoch."""
        r = self.role(epoch, role)
        streams = [s.role_stream(r, tag) for tag, s in enumerate(self.sources)]
        rng = random.Random(derive_seed(self.cfg.seed, "mix", epoch, self.rank, role))
        return mix(streams, [s.weight for s in self.cfg.sources], rng)

    def role_batches(self, epoch: int, role: int, start_batch: int = 0, raw_pos: int = 0) -> Iterator[dict[str, Any]]:
        """The batches owned by ``role`` (indices j with j % num_roles == role, j >= start_batch),
        each tagged with ``__pos__`` = (epoch, j, role, raw samples read, samples skipped)."""
        n = self.batches_per_epoch
        counter = Counter(raw_pos)
        errors_before = self.errors.count
        stream = counter.wrap(itertools.islice(self.raw_stream(epoch, role), raw_pos, None))  # skip: no decoding
        j = start_batch + (role - start_batch) % self.num_roles
        while n is None or j < n:
            samples = []
            while len(samples) < self.cfg.batch_size:
                raw = next(stream)
                try:
                    samples.append(self.processor(raw))
                except Exception as err:  # noqa: BLE001 - any bad sample is skipped and counted
                    self.errors(err, str(raw.get("__key__", "?")))
            skipped, errors_before = self.errors.count - errors_before, self.errors.count
            self.collator.generator.manual_seed(derive_seed(self.cfg.seed, "masks", epoch, self.rank, j))
            batch = collate(self.collator, samples)
            batch["__pos__"] = (epoch, j, role, counter.n, skipped)
            yield batch
            j += self.num_roles

    def loader(self, epoch: int, start_batch: int = 0, raw_pos: dict[int, int] | None = None,
               pin_memory: bool = False) -> DataLoader:
        """A DataLoader over this process's batches of ``epoch`` from ``start_batch`` on.

        Not to be passed through ``accelerator.prepare``: the data is already split per process.
        """
        ds = _EpochBatches(self, epoch, start_batch, dict(raw_pos or {}))
        nw = self.cfg.num_workers
        return DataLoader(ds, batch_size=None, num_workers=nw, pin_memory=pin_memory,
                          prefetch_factor=self.cfg.prefetch_factor if nw > 0 else None,
                          worker_init_fn=_worker_init if nw > 0 else None)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class _EpochBatches(IterableDataset):
    """One epoch of a process's batches; DataLoader worker w plays role (w + start) % num_roles so
    that the loader's round robin over workers yields batches start, start+1, ... in order."""

    def __init__(self, pipeline: DataPipeline, epoch: int, start_batch: int, raw_pos: dict[int, int]):
        self.pipeline, self.epoch, self.start_batch, self.raw_pos = pipeline, epoch, start_batch, raw_pos

    def __iter__(self):
        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if nw != self.pipeline.num_roles:
            raise RuntimeError(f"{nw} workers for {self.pipeline.num_roles} roles")
        role = (w + self.start_batch) % nw
        yield from self.pipeline.role_batches(self.epoch, role, self.start_batch, self.raw_pos.get(role, 0))


class DataStream:
    """Endless iterator over a process's batches, epoch after epoch, that knows its position.

    ``state_dict()`` = the position after the last batch handed out; a stream built with
    ``load_state_dict(state)`` continues exactly there (same samples, same masks).
    """

    def __init__(self, pipeline: DataPipeline, pin_memory: bool = False):
        self.pipeline = pipeline
        self.pin_memory = pin_memory
        self.epoch, self.batch, self.raw_pos = 0, 0, {}
        self.skipped = 0
        self._it: Iterator | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "raw_pos": {str(k): v for k, v in self.raw_pos.items()},
                "num_roles": self.pipeline.num_roles, "world_size": self.pipeline.world_size,
                "batch_size": self.pipeline.cfg.batch_size, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, now in (("num_roles", self.pipeline.num_roles), ("world_size", self.pipeline.world_size),
                         ("batch_size", self.pipeline.cfg.batch_size)):
            if state[key] != now:
                name = {"num_roles": "data.num_workers (>= 1)", "world_size": "the number of processes",
                        "batch_size": "data.batch_size"}[key]
                raise ValueError(f"cannot resume the data position exactly: the checkpoint used {state[key]} for "
                                 f"{name}, this run {now}; resume with the same setting")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.raw_pos = {int(k): int(v) for k, v in state["raw_pos"].items()}
        self.skipped = int(state.get("skipped", 0))
        self._it = None

    def __iter__(self) -> "DataStream":
        return self

    def __next__(self) -> dict[str, Any]:
        n = self.pipeline.batches_per_epoch
        while True:
            if n is not None and self.batch >= n:
                self.epoch, self.batch, self.raw_pos, self._it = self.epoch + 1, 0, {}, None
            if self._it is None:
                self._it = iter(self.pipeline.loader(self.epoch, self.batch, self.raw_pos, self.pin_memory))
            try:
                batch = next(self._it)
            except StopIteration:
                if n is None:
                    raise RuntimeError("the data stream ended") from None
                raise RuntimeError(f"epoch {self.epoch} ended after {self.batch} of {n} batches") from None
            epoch, j, role, pos, skipped = batch.pop("__pos__")
            if (epoch, j) != (self.epoch, self.batch):
                raise RuntimeError(f"data out of order: got batch {(epoch, j)}, expected {(self.epoch, self.batch)}")
            self.batch, self.raw_pos[role], self.skipped = j + 1, pos, self.skipped + skipped
            return batch

    def close(self) -> None:
        self._it = None


def iterate_epoch(pipeline: DataPipeline, epoch: int = 0) -> Iterator[dict[str, Any]]:
    """The batches of one whole epoch of this process (a finite iterator, for evaluation/tests)."""
    n = pipeline.batches_per_epoch
    if n is None:
        raise ValueError("the epoch length is unknown: set data.epoch_samples or num_samples on the sources")
    stream = DataStream(pipeline)
    stream.epoch = epoch
    for _ in range(n):
        yield next(stream)
    stream.close()


def batches_per_second(pipeline: DataPipeline, num_batches: int, warmup: int = 2) -> tuple[float, int]:
    """Throughput of the input pipeline alone: (samples/s, samples) over ``num_batches`` after warm-up."""
    import time

    stream = DataStream(pipeline)
    for _ in range(warmup):
        next(stream)
    t0 = time.perf_counter()
    samples = 0
    for _ in range(num_batches):
        b = next(stream)
        samples += len(b["__key__"])
    dt = time.perf_counter() - t0
    stream.close()
    return samples / max(dt, 1e-9), samples


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The part of a batch the model takes: drop keys, labels and other metadata."""
    return {k: v for k, v in batch.items() if not k.startswith("__") and k != "label"}


__all__ = [
    "SourceConfig", "DataConfig", "DataPipeline", "DataStream", "BuiltinSource", "ShardSource", "HFSource",
    "SampleProcessor", "build_collator", "collate", "decode_value", "derive_seed", "iterate_epoch",
    "batches_per_second", "model_inputs", "expand_urls",
]
