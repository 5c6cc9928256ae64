"""The mask collator: per-sample model inputs -> one batch with every modality's masks.

Each modality's part of the batch is built by its plug-in (``Modality.collate``: stacking, padding,
validity masks), then its mask sampler draws index tensors (``mmjepa.masking``) — I-JEPA's design:
masks are made here, in the data loader, and applied in the model by gather.

A sample may hold any subset of the modalities. Each modality's part of the batch holds only the
samples that have it, in order, and ``batch["present"][m]`` (Bm,) gives their positions in the
batch; a modality no sample of the batch has is left out.

``mask_sets`` R > 1 draws R independent mask sets per sample (data2vec 2.0's multi-mask training):
the sampler is called for Bm*R rows (the validity mask repeated R times) and row b*R + r of every
mask tensor is set r of sample b; the model inputs are not repeated. R = 1 draws exactly the masks
it always did.
"""

from __future__ import annotations

from typing import Any

import torch

from .masking import MaskSet
from .modalities import Modality, get_modality


class MaskCollator:
    """Collate processed samples into a batch and draw every modality's masks.

    ``modalities`` maps a modality name to ``(plug-in class, its config, mask sampler)``. Samples
    are dicts of per-sample model inputs; keys that no plug-in consumes (labels, sample keys,
    attention masks ...) pass through: numbers become a tensor, equal-shaped tensors are stacked,
    anything else stays a list. The generator is seeded from ``seed`` so a run's masks are
    reproducible; ``state_dict`` / ``load_state_dict`` carry it for exact resume.
    """

    def __init__(self, modalities: dict[str, tuple[type[Modality], Any, Any]], seed: int = 0, mask_sets: int = 1):
        if isinstance(mask_sets, bool) or not isinstance(mask_sets, int) or mask_sets < 1:
            raise ValueError(f"mask_sets must be an int >= 1, got {mask_sets!r}")
        self.modalities = dict(modalities)
        self.mask_sets = mask_sets
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_config(cls, config: Any, seed: int = 0) -> "MaskCollator":
        """The collator of an ``MMJepaConfig``: each modality's own collate and default mask sampler,
        ``config.mask_sets`` mask sets per sample."""
        parts = {}
        for name in config.modalities:
            mod, cfg = get_modality(name), config.modality_config(name)
            parts[name] = (mod, cfg, mod.build_mask_sampler(cfg))
        return cls(parts, seed, config.mask_sets)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        batch: dict[str, Any] = {}
        masks: dict[str, MaskSet] = {}
        present: dict[str, torch.Tensor] = {}
        consumed: set[str] = set()
        for name, (mod, cfg, sampler) in self.modalities.items():
            consumed.update((mod.input_key, *mod.sample_keys))
            rows = [i for i, s in enumerate(samples) if s.get(mod.input_key) is not None]
            if not rows:
                continue
            part = mod.collate([samples[i] for i in rows], cfg)
            batch.update(part)
            valid, R = mod.valid_tokens(part), self.mask_sets
            if R > 1 and valid is not None:
                valid = valid.repeat_interleave(R, 0)  # (Bm*R, N): row b*R + r is sample b
            masks[name] = sampler(len(rows) * R, self.generator, valid=valid)
            present[name] = torch.tensor(rows, dtype=torch.long)
        if not masks:
            raise ValueError(f"no sample holds any of the modalities {list(self.modalities)}")
        batch["present"] = present
        for k in sorted({k for s in samples for k in s} - set(batch) - consumed):  # labels, keys ... pass through
            vals = [s.get(k) for s in samples]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                batch[k] = torch.as_tensor(vals)
            elif all(isinstance(v, torch.Tensor) for v in vals) and len({tuple(v.shape) for v in vals}) == 1:
                batch[k] = torch.stack(vals)
            else:
                batch[k] = vals
        batch["masks"] = masks
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
