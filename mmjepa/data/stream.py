"""The resumable stream: a process's batches, epoch after epoch, that knows its position."""

from __future__ import annotations

from typing import Any, Iterator

from .pipeline import DataError, DataPipeline


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
            if "__error__" in batch:
                raise DataError(batch["__error__"])
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


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The part of a batch the model takes: drop the sample keys and other ``__`` metadata (labels
    stay: an objective may use them)."""
    return {k: v for k, v in batch.items() if not k.startswith("__")}
