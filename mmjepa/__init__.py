"""mmjepa: multimodal Joint-Embedding Predictive Architecture pretraining for image, text and audio."""

from transformers import AutoConfig, AutoModel

from .config import MMJepaConfig
from .model import MMJepaModel, MMJepaOutput, compile_model
from .processing import MMJepaProcessor

AutoConfig.register("mmjepa", MMJepaConfig, exist_ok=True)
AutoModel.register(MMJepaConfig, MMJepaModel, exist_ok=True)

__version__ = "0.1.0"
__all__ = ["MMJepaConfig", "MMJepaModel", "MMJepaOutput", "MMJepaProcessor", "compile_model"]
