"""Data sources: where raw samples come from, split per process (rank) and worker role.

- :class:`ShardSource`: WebDataset tar shards (a brace pattern, a list, or a folder with the
  ``manifest.json`` of ``mmjepa shards``);
- :class:`HFSource`: a Hugging Face dataset, streamed;
- :class:`BuiltinSource`: in-memory samples (the built-in datasets).

Each has ``role_stream(role, tag)``: the endless raw samples of one worker role for one epoch.
"""

from __future__ import annotations

import itertools
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import braceexpand  # a dependency of webdataset
import torch
from webdataset.gopen import gopen
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys, tar_file_expander

from ..datasets import load_builtin
from ..shards import MANIFEST, read_manifest
from .config import SourceConfig
from .stages import Role, compose, derive_seed, shuffle_stage, split_by_node, split_by_worker


def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace patterns (``a-{000..009}.tar``) and ``::``-joined lists -> a list of urls."""
    items = urls if isinstance(urls, (list, tuple)) else str(urls).split("::")
    out: list[str] = []
    for u in items:
        out.extend(braceexpand.braceexpand(str(u)))
    return out


def is_local(url: str) -> bool:
    """True for a file path, False for a remote url (``s3://...``, ``https://...``) or a pipe."""
    return "://" not in url and not url.startswith("pipe:")


def check_local_shards(urls: list[str]) -> None:
    """Raise ValueError naming the local shard files that do not exist (remote ones are not checked)."""
    missing = [u for u in urls if is_local(u) and not Path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"no such shard file: {missing[0]}{more}")


def _open_manifest(urls: str | list[str]) -> dict | None:
    """The manifest of ``mmjepa shards`` when ``urls`` names a folder holding one or the file itself."""
    if isinstance(urls, str) and "{" not in urls and "::" not in urls:
        p = Path(urls)
        if (p.is_dir() and (p / MANIFEST).exists()) or (p.is_file() and p.suffix == ".json"):
            return read_manifest(p)
    return None


def shard_urls(urls: str | list[str]) -> tuple[list[str], int | None]:
    """The shard files ``urls`` names — a folder written by ``mmjepa shards`` or its manifest, a brace
    pattern, a ``::``-joined list or a list — and the sample count its manifest gives (None without
    one). Local shard files are checked to exist."""
    manifest = _open_manifest(urls)
    if manifest is not None:
        out, total = [s["url"] for s in manifest["shards"]], manifest["total"]
    else:
        out, total = expand_urls(urls), None
    check_local_shards(out)
    return out, total


def tar_samples(urls: list[str], handler: Callable[..., bool] | None = None) -> Iterator[dict[str, Any]]:
    """Samples of each shard in turn (files grouped by key); each shard is closed when left, also
    when the consumer stops early. ``handler(err, ...)`` decides on a bad shard or file (skip and
    count); without one, errors are raised."""
    for url in urls:
        try:
            stream = gopen(url)
        except Exception as err:  # noqa: BLE001 - an unreadable shard is skipped and counted
            if handler is None:
                raise
            handler(err, url)
            continue
        with stream:
            files = tar_file_expander([{"url": url, "stream": stream}], handler=handler or reraise_exception)
            yield from group_by_keys(files, handler=handler or reraise_exception)


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
        if isinstance(cfg.urls, str) and is_local(cfg.urls) and "{" not in cfg.urls and "::" not in cfg.urls:
            if not Path(cfg.urls).exists():
                raise ValueError(f"no such folder or file: {cfg.urls}")
            if Path(cfg.urls).is_dir() and not (Path(cfg.urls) / MANIFEST).exists():
                raise ValueError(f"folder {cfg.urls} has no {MANIFEST}: point urls at shards written by "
                                 "`mmjepa shards`, or at the .tar files (a brace pattern or a list)")
        self.urls, total = shard_urls(cfg.urls)
        self.num_samples = cfg.num_samples or total
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
        return tar_samples(urls, self.handler)

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
        # Hugging Face datasets is imported only by the runs that stream from it (a second of start-up)
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
        from datasets.distributed import split_dataset_by_node  # see _dataset

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
                        sample[f"{k}.{ext}" if ext else k] = v["bytes"]  # decoded by extension
                    else:
                        sample[k] = v
                sample.setdefault("__key__", f"{self.name}/{p}/{n}")
                n += 1
                yield sample
            if n == 0:
                raise RuntimeError(f"{self.name}: rank {r.rank} role {r.role} got no sample")


def build_source(cfg: SourceConfig, handler: Callable[[Exception], bool]):
    if cfg.type == "builtin":
        return BuiltinSource(load_builtin(cfg.name, cfg.split, **cfg.options), cfg.name)
    if cfg.type == "shards":
        return ShardSource(cfg, handler)
    return HFSource(cfg)
