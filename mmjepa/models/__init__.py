"""The model: config, encoders, predictor, EMA, and ``MMJepaModel`` (registered with the transformers Auto classes)."""

from transformers import AutoConfig, AutoModel

from .config import PRESETS, MMJepaConfig
from .model import JepaView, MMJepaModel, MMJepaOutput, compile_model

AutoConfig.register("mmjepa", MMJepaConfig, exist_ok=True)
AutoModel.register(MMJepaConfig, MMJepaModel, exist_ok=True)

__all__ = ["PRESETS", "MMJepaConfig", "MMJepaModel", "MMJepaOutput", "JepaView", "compile_model"]
