"""The input pipeline: raw samples -> decoded, processed, masked batches, as a list of stages.

One process (rank) of a run reads its share of the data; each DataLoader worker of that process
plays one *role*. Per role the stages are::

    sources   shards: shard list -> split by node -> split by worker -> tar samples -> shuffle
              builtin: in-memory samples, permuted per epoch, assigned by global batch
              hf: datasets streaming, split_dataset_by_node, binary (undecoded) media columns
    mix       several sources drawn by weight
    skip      fast-forward to the resume position (before any decoding)
    decode    each field by its modality plug-in, chosen by file extension (decode.py)
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
A run never spins on bad data: once more than ``max_error_rate`` of the last ``error_window``
samples of a worker failed (or all of them), the stream raises :class:`DataError` naming the first
cause and the count.

Files: ``config.py`` (the recipe section), ``stages.py`` (stream stages, seeds), ``sources.py``,
``decode.py``, this file (batches per worker role, the loader), ``stream.py`` (the resumable stream).
"""

from __future__ import annotations

import collections
import itertools
import random
import signal
import warnings
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..collate import MaskCollator
from .config import DataConfig
from .decode import SampleProcessor
from .sources import BuiltinSource, ShardSource, build_source, is_local
from .stages import Counter, Role, derive_seed, mix


class DataError(RuntimeError):
    """The data cannot feed the run (too many bad samples); the message names the first cause."""


class ErrorCounter:
    """The bad-sample handler: counts, remembers the first cause, warns about the first few (with
    their key), or raises."""

    def __init__(self, mode: str = "skip", where: str = "", max_warnings: int = 5):
        self.mode, self.where, self.count, self.max_warnings = mode, where, 0, max_warnings
        self.first: str | None = None

    def __call__(self, err: Exception, key: str = "?") -> bool:
        if self.mode == "raise":
            raise err
        self.count += 1
        if self.first is None:
            self.first = f"sample {key!r}: {type(err).__name__}: {err}"
        if self.count <= self.max_warnings:
            more = " (further ones are counted, not shown)" if self.count == self.max_warnings else ""
            warnings.warn(f"skipping bad sample {key!r}{self.where}: {type(err).__name__}: {err}{more}")
        return True


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
            self._processor = SampleProcessor(self.model_config, self.cfg.keys, self.cfg.require, train=True)
        return self._processor

    @property
    def collator(self) -> MaskCollator:
        if self._collator is None:
            self._collator = MaskCollator.from_config(self.model_config, self.cfg.seed)
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
        window: collections.deque[bool] = collections.deque(maxlen=self.cfg.error_window)  # True = failed
        stream = counter.wrap(itertools.islice(self.raw_stream(epoch, role), raw_pos, None))  # skip: no decoding
        j = start_batch + (role - start_batch) % self.num_roles
        while n is None or j < n:
            samples = []
            augment = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "augment", epoch, self.rank, j))
            while len(samples) < self.cfg.batch_size:
                raw = next(stream)
                try:
                    samples.append(self.processor(raw, augment))
                    window.append(False)
                except Exception as err:  # noqa: BLE001 - any bad sample is skipped and counted
                    self.errors(err, str(raw.get("__key__", "?")))
                    window.append(True)
                    if self._too_many_errors(window):
                        # handed to the main process as a batch: DataStream raises it there, with
                        # its own message (an exception from a loader worker arrives wrapped)
                        yield {"__error__": self._error_message(window, role), "__pos__": (epoch, j, role, counter.n, 0)}
                        return
            skipped, errors_before = self.errors.count - errors_before, self.errors.count
            self.collator.generator.manual_seed(derive_seed(self.cfg.seed, "masks", epoch, self.rank, j))
            batch = self.collator(samples)
            batch["__pos__"] = (epoch, j, role, counter.n, skipped)
            yield batch
            j += self.num_roles

    def _too_many_errors(self, window: collections.deque) -> bool:
        if len(window) < window.maxlen:
            return False
        failed = sum(window)
        return failed == len(window) or failed / len(window) > self.cfg.max_error_rate

    def _error_message(self, window: collections.deque, role: int) -> str:
        return (f"{sum(window)} of the last {len(window)} samples read by data worker {role} of rank {self.rank} "
                f"failed (limit: data.max_error_rate={self.cfg.max_error_rate} over data.error_window="
                f"{self.cfg.error_window}); the first: {self.errors.first}")

    def preflight(self) -> dict[str, str]:
        """Checks that need no training (called by the trainer before it writes anything): build
        every processor (loading tokenizers), and look at the first sample of each local source.
        Returns the fields those samples hold of modalities the model does not use ({field: modality})."""
        ignored: dict[str, str] = {}
        processor = self.processor
        for source in self.sources:
            first = None
            if isinstance(source, BuiltinSource):
                first = source.items[0]
            elif isinstance(source, ShardSource) and is_local(source.urls[0]):
                first = next(iter(source.tar_samples(source.urls[:1])), None)
            if first is not None:
                ignored.update(processor.ignored_fields(first))
        return ignored

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
    # Ctrl-C in a terminal reaches the whole process group: the main process stops the run between
    # steps (and shuts the workers down); a worker killed by it mid-batch would only break that.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
