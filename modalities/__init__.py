"""Modality plug-ins (installed as ``mmjepa.modalities``): one file per modality.

The built-in ones (``image``, ``audio``, ``text``) are imported on first use by
:func:`get_modality`; see ``base.py`` for the interface a plug-in implements.
"""

from .base import (GridPatchEmbed, Modality, get_modality, modality_for_extension, pair, register_modality,
                   registered_modalities)

__all__ = ["GridPatchEmbed", "Modality", "get_modality", "modality_for_extension", "pair", "register_modality",
           "registered_modalities"]
