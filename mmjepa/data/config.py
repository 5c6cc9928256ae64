"""The ``data`` section of a recipe: sources, batching, shuffling, and what to do with bad samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SOURCE_TYPES = ("shards", "hf", "builtin")


@dataclass
class SourceConfig:
    """One data source of a recipe's ``data.sources`` list.

    - ``shards``: ``urls`` = a brace pattern (``/data/in-{000000..000099}.tar``), a list of urls, or
      a folder / ``manifest.json`` written by ``mmjepa shards`` (sample counts come from it);
    - ``hf``: ``path`` = a dataset on the Hub or a local folder, or ``webdataset`` with ``urls`` as
      its data files; ``name`` = its configuration; streamed;
    - ``builtin``: ``name`` = a dataset of :func:`mmjepa.datasets.load_builtin` (in memory), with
      its ``options`` (e.g. ``{paired_fraction: 0.05}`` for ``spoken_digits``).

    Relative local paths in ``urls`` and ``path`` are resolved against the recipe file's folder.
    """

    type: str = "shards"
    urls: Any = field(default=None, metadata={"path": True})  # str or list of str
    path: str | None = field(default=None, metadata={"path": True})
    name: str | None = None
    split: str = "train"
    weight: float = 1.0
    num_samples: int | None = None  # samples in the source, when there is no manifest
    resampled: bool = False  # draw shards with replacement (shards / hf) instead of splitting them
    options: dict[str, Any] = field(default_factory=dict)  # builtin: the dataset's options

    def __post_init__(self):
        if self.type not in SOURCE_TYPES:
            raise ValueError(f"type must be one of {SOURCE_TYPES}, got {self.type!r}")
        if self.urls is not None and not isinstance(self.urls, str):
            self.urls = list(self.urls)
            if not all(isinstance(u, str) for u in self.urls):
                raise ValueError(f"urls must be a string or a list of strings, got {self.urls!r}")
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
    """The ``data`` section of a recipe.

    ``keys`` maps a modality to ``;``-separated field names that hold it, on top of the file
    extensions its plug-in decodes (e.g. ``{image: "jpg;png"}``). ``require`` lists the modalities
    every sample must hold (default: all of the model's); with ``require: []`` a sample may hold any
    non-empty subset of them (image-text pairs beside audio-text pairs and triples). Bad samples are skipped and
    counted (``on_error: skip``) or fatal (``raise``); a run stops with an error naming the first
    cause once more than ``max_error_rate`` of the last ``error_window`` samples read by one data
    worker failed, or all of them did.
    """

    sources: list[SourceConfig] = field(default_factory=list)
    batch_size: int = 64  # per process (the global batch is batch_size * processes * grad_accum)
    num_workers: int = 2
    shuffle_buffer: int = 1000  # samples; 0 turns shuffling off
    shuffle: bool = True
    seed: int = 0
    epoch_samples: int | None = None  # samples per epoch (default: the sum over sources)
    keys: dict[str, str] = field(default_factory=dict)  # modality -> extra field names
    require: list[str] | None = None  # modalities every sample must hold (None: all of the model's)
    on_error: str = "skip"  # "skip" (count and warn) or "raise"
    max_error_rate: float = 0.5
    error_window: int = 200
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
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must lie in [0, 1], got {self.max_error_rate}")
        if self.error_window < 1:
            raise ValueError(f"error_window must be >= 1, got {self.error_window}")
        if self.epoch_samples is not None and self.epoch_samples < 1:
            raise ValueError(f"epoch_samples must be >= 1, got {self.epoch_samples}")
        if self.prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {self.prefetch_factor}")
        self.keys = dict(self.keys)
