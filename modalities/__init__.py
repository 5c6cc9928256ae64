"""Modality plug-ins (installed as ``mmjepa.modalities``). Importing this package registers them."""

from .base import Modality, get_modality, register_modality, registered_modalities
from . import image  # noqa: F401  (registers "image")
from . import text  # noqa: F401  (registers "text")
from . import audio  # noqa: F401  (registers "audio")

__all__ = ["Modality", "get_modality", "register_modality", "registered_modalities"]
