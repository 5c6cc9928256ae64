"""Stream stages: small functions iterator -> iterator that the sources and the pipeline chain
(``compose``), and the seeds that make every stream a pure function of its position."""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and Python runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


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
