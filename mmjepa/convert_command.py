"""``mmjepa convert``: I-JEPA checkpoints -> mmjepa model folders, and mmjepa image models -> a
transformers ``IJepaModel`` folder (the functions are in :mod:`mmjepa.convert`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoConfig

from .convert import convert_ijepa, hf_ijepa_from_mmjepa
from .models import MMJepaModel
from .paths import local_or_hub


def _output(path: str, source: str | None = None) -> Path:
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file, not a folder")
    if source is not None and out.exists() and Path(source).expanduser().exists() and \
            out.resolve() == Path(source).expanduser().resolve():
        raise ValueError("--output is the source folder: write the converted model elsewhere")
    return out


def run_ijepa(args: argparse.Namespace) -> int:
    out = _output(args.output, args.source)
    conv = convert_ijepa(args.source, num_heads=args.num_heads, image_size=args.image_size,
                         predictor=not args.no_predictor)
    conv.model.save_pretrained(out)
    print(f"{conv.summary()} -> {out}")
    return 0


def run_to_hf(args: argparse.Namespace) -> int:
    out = _output(args.output, args.model)
    ref = local_or_hub(args.model, "MODEL_DIR")
    try:
        model_type = AutoConfig.from_pretrained(ref).model_type
    except (OSError, ValueError) as err:
        raise ValueError(f"{ref}: not a saved mmjepa model ({str(err).strip().splitlines()[0]})") from None
    if model_type != "mmjepa":
        raise ValueError(f"{ref} holds a {model_type!r} model, not an mmjepa model")
    model = MMJepaModel.from_pretrained(ref)
    if "image" not in model.modality_names:
        raise ValueError(f"{ref} has no image modality (it has {model.modality_names}): only image encoders map "
                         "onto an IJepaModel")
    use_target = not args.use_context_encoder
    hf = hf_ijepa_from_mmjepa(model, use_target=use_target)
    hf.save_pretrained(out)
    c = hf.config
    print(f"wrote a transformers IJepaModel (width {c.hidden_size}, depth {c.num_hidden_layers}, heads "
          f"{c.num_attention_heads}, patch {c.patch_size}, image {c.image_size}) from the "
          f"{'EMA target' if use_target else 'context'} image encoder of {ref} -> {out}; the predictor and any "
          "other modality are not part of an IJepaModel")
    return 0


def run(args: argparse.Namespace) -> int:
    """``mmjepa convert ijepa | to-hf`` with parsed arguments (see ``mmjepa_cli``)."""
    return {"ijepa": run_ijepa, "to-hf": run_to_hf}[args.task](args)
