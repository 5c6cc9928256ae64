"""Registration with the transformers Auto classes, done by ``import mmjepa``.

After it, ``AutoConfig`` / ``AutoModel`` load an mmjepa folder, ``AutoProcessor`` its
:class:`~mmjepa.processing.MMJepaProcessor`, and ``AutoImageProcessor`` / ``AutoFeatureExtractor``
the processors of the modalities whose plug-in plays those roles (every registered modality's
plug-in is imported for it). ``AutoTokenizer`` needs nothing: a saved tokenizer names its own
transformers class.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoFeatureExtractor, AutoImageProcessor, AutoModel, AutoProcessor

from .modalities import get_modality, registered_modalities
from .models import MMJepaConfig, MMJepaModel
from .processing import MMJepaProcessor


def register_auto_classes() -> None:
    """Register mmjepa's config, model and processors with the Auto classes (idempotent)."""
    AutoConfig.register(MMJepaConfig.model_type, MMJepaConfig, exist_ok=True)
    AutoModel.register(MMJepaConfig, MMJepaModel, exist_ok=True)
    AutoProcessor.register(MMJepaConfig, MMJepaProcessor, exist_ok=True)
    for name in registered_modalities():
        mod = get_modality(name)
        if mod.hf_role == "image_processor":
            cls = mod.processor_class
            AutoImageProcessor.register(MMJepaConfig, image_processor_classes={"pil": cls, "torchvision": cls},
                                        exist_ok=True)
        elif mod.hf_role == "feature_extractor":
            AutoFeatureExtractor.register(MMJepaConfig, mod.processor_class, exist_ok=True)
