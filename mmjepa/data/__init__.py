"""The input pipeline (see ``pipeline.py`` for the stages and the guarantees)."""

from .config import DataConfig, SourceConfig
from .decode import SampleProcessor, decode_meta
from .pipeline import DataError, DataPipeline
from .sources import BuiltinSource, HFSource, ShardSource, expand_urls
from .stages import derive_seed, split_by_node, split_by_worker
from .stream import DataStream, iterate_epoch, model_inputs

__all__ = ["DataConfig", "SourceConfig", "SampleProcessor", "decode_meta", "DataError", "DataPipeline",
           "BuiltinSource", "HFSource", "ShardSource", "expand_urls", "derive_seed", "split_by_node",
           "split_by_worker", "DataStream", "iterate_epoch", "model_inputs"]
