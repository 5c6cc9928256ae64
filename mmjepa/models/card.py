"""The model card (``README.md``) that ``save_pretrained`` writes beside a model, for the Hub.

Built from what the folder knows: the config (modalities, widths, objectives), the recipe and
training state the trainer's export leaves there (``recipe.yaml``, ``training_state.json``), and
evaluation metrics (given, or ``metrics.json``). The YAML header carries the Hub's metadata
(library, license, tags, pipeline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..modalities import get_modality


def _source(source: dict[str, Any]) -> str:
    """One data source of a recipe, in words (local paths by their last part: they do not travel)."""
    kind = source.get("type", "shards")
    if kind == "builtin":
        return f"built-in `{source.get('name')}` ({source.get('split', 'train')})"
    where = source.get("path") or source.get("urls") or ""
    where = where if isinstance(where, str) else f"{len(where)} shard urls"
    return f"{kind} `{Path(where).name if where.startswith(('/', '.')) else where}`"


def _recipe_lines(folder: Path) -> list[str]:
    recipe_file, state_file = folder / "recipe.yaml", folder / "training_state.json"
    lines: list[str] = []
    if recipe_file.is_file():
        recipe = yaml.safe_load(recipe_file.read_text()) or {}
        train, data, optim = recipe.get("train", {}), recipe.get("data", {}), recipe.get("optim", {})
        sources = [_source(s) for s in data.get("sources") or []]
        lines.append("| setting | value |\n|---|---|")
        for key, value in (("steps", train.get("max_steps") or train.get("epochs")), ("batch size", data.get("batch_size")),
                           ("learning rate", optim.get("lr")), ("mixed precision", train.get("mixed_precision")),
                           ("data", ", ".join(sources) or None)):
            if value not in (None, ""):
                lines.append(f"| {key} | {value} |")
        lines.append("\nThe full recipe is `recipe.yaml` in this repository.")
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        lines.append(f"\nTrained for {state.get('step')} steps ({state.get('samples_seen')} samples).")
    return lines


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def model_card(config: Any, folder: str | Path, metrics: dict[str, Any] | None = None,
               license: str = "apache-2.0", repo_id: str | None = None,
               num_parameters: dict[str, int] | None = None) -> str:
    """The text of ``README.md`` for a model with ``config`` saved in ``folder``; ``num_parameters``:
    ``{"total": n, modality: n of its embedding tower, ...}``."""
    sizes = num_parameters or {}
    folder = Path(folder)
    names = list(config.modalities)
    repo = repo_id or folder.name
    header = {"library_name": "mmjepa", "license": license, "pipeline_tag": "feature-extraction",
              "tags": ["mmjepa", "jepa", "self-supervised-learning", "multimodal", *names]}
    out = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
           f"# {repo}", "",
           f"A multimodal JEPA (Joint-Embedding Predictive Architecture) model trained with "
           f"[mmjepa](https://pypi.org/project/mmjepa/): {', '.join(names)} encoders that map their inputs into one "
           f"{config.hidden_size}-dimensional latent space, EMA target encoders, and a predictor that infers the "
           "latents of masked parts (and of missing modalities) from the visible ones.", "",
           "## Architecture", "",
           f"- encoders: width {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} "
           f"heads, {config.position_embedding} positions",
           f"- predictor: width {config.predictor_hidden_size}, {config.predictor_num_hidden_layers} layers, "
           f"{config.predictor_num_attention_heads} heads",
           "- this checkpoint holds: " + ("the EMA target encoders and embedding centres (embedding only)"
                                           if config.checkpoint_contents == "embedding" else
                                           "context encoders, EMA target encoders, predictor and objective heads "
                                           "(embedding and continued training)"),
           *([f"- parameters: {_millions(sizes['total'])} in all"] if "total" in sizes else []), "",
           "| modality | model input | processor keyword | training masks | embedding tower |", "|---|---|---|---|---|"]
    for name in names:
        mod = get_modality(name)
        mask = getattr(config.modality_config(name), "mask", "-")
        tower = _millions(sizes[name]) if name in sizes else "-"
        out.append(f"| {name} | `{mod.input_key}` | `{mod.processor_arg}=` | {mask} | {tower} |")
    out += ["", "Training objectives (weighted sum): "
            + ", ".join(f"`{n}` ({o.get('type', n)}, weight {o.get('weight', 1.0)})" for n, o in config.objectives.items())
            + ".", ""]
    recipe = _recipe_lines(folder)
    if recipe:
        out += ["## Training", "", *recipe, ""]
    if metrics:
        out += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        out += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in flat.items()]
        out.append("")
    arg = get_modality(names[0]).processor_arg
    out += ["## How to use", "", "```python",
            "import mmjepa  # registers the model and its processor with transformers' Auto classes",
            "from transformers import AutoModel, AutoProcessor", "",
            f'model = AutoModel.from_pretrained("{repo}").eval()',
            f'processor = AutoProcessor.from_pretrained("{repo}")',
            f"inputs = processor({arg}=...)          # see the processor keywords above",
            "embeddings = model.embed(**inputs)   # {modality: (batch, "
            f"{config.hidden_size}) L2-normalised embeddings in the shared space}}",
            "```", "",
            f"Only some modalities: `MMJepaModel.from_pretrained(\"{repo}\", modalities=[...])`. To search a "
            f"gallery from another modality, `mmjepa embed --model {repo} ...` then `mmjepa search`.", "",
            "## Masks", "",
            "Masks are sampled during training by the collator as index tensors of the tokens each context "
            "and target block keeps; each modality's options in `config.json` (`mask`, `num_targets`, scales) "
            "say how. They are not needed for embedding.", ""]
    return "\n".join(out)
