"""mmjepa: multimodal Joint-Embedding Predictive Architecture pretraining for image, text and audio.

Importing the package registers ``MMJepaConfig`` / ``MMJepaModel`` / ``MMJepaProcessor`` and the
modalities' processors with transformers' ``AutoConfig``, ``AutoModel``, ``AutoProcessor``,
``AutoImageProcessor`` and ``AutoFeatureExtractor`` (see ``mmjepa.auto``). The command line lives in ``mmjepa_cli`` (it parses arguments before importing
this package, so that ``mmjepa --help`` answers at once).
"""

from .auto import register_auto_classes
from .collate import MaskCollator
from .eval.spans import fill_spans, fill_spans_text
from .models import MMJepaConfig, MMJepaModel, MMJepaOutput, compile_model
from .processing import MMJepaProcessor

register_auto_classes()

__version__ = "0.1.0"
__all__ = ["MMJepaConfig", "MMJepaModel", "MMJepaOutput", "MMJepaProcessor", "MaskCollator", "compile_model",
           "fill_spans", "fill_spans_text"]
