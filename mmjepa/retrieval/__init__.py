"""Cross-modal retrieval: embed galleries of items once, search them from any modality."""

from .index import BACKENDS, MODES, EmbeddingIndex, model_identity
from .items import Embedded, embed_items, read_items, string_items, string_modality

__all__ = ["BACKENDS", "MODES", "EmbeddingIndex", "model_identity", "Embedded", "embed_items", "read_items",
           "string_items", "string_modality"]
