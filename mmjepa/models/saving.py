"""How an ``MMJepaModel`` is written to a folder and read back (mixed into the model class).

Design decisions:
- one folder holds everything: ``config.json``, ``model.safetensors`` (safetensors only; pickle
  weights are refused on load unless ``allow_pickle=True``, and then read with
  ``torch.load(weights_only=True)``), the processor (``processor_config.json`` + tokenizer files) and a
  model card (``README.md``); the trainer's export calls the same ``save_pretrained``, so its
  folders and a user's are the same thing;
- by default the checkpoint holds what continued training needs (context encoders, EMA targets,
  predictor, objectives' heads, embedding centres); ``embedding_only=True`` keeps what embedding
  needs (EMA targets and centres), marked ``checkpoint_contents: "embedding"`` in the config, and
  such a checkpoint loads with its context encoders set to the targets;
- ``from_pretrained(..., modalities=[...])`` builds and loads only those modalities (their
  encoders, the predictor with the full model's modality rows, the objectives that still apply);
- nothing saved points outside the folder: modality options that name files are rewritten (see
  ``mmjepa.processing.portable_options``) and resolved against the folder or Hub id on load.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi
from transformers import AutoModel

from ..modalities import get_modality
from ..paths import looks_local
from ..processing import HUB_KWARGS, MMJepaProcessor, portable_options
from .card import model_card as card_text

EMBEDDING_KEYS = ("target_encoders.", "centers.")  # what embedding needs
CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"


def _written_by_someone_else(card: Path) -> bool:
    """A README.md in the folder that mmjepa did not generate (kept as it is)."""
    return card.is_file() and "library_name: mmjepa" not in card.read_text(errors="replace")[:2000]


class SavingMixin:
    """``save_pretrained`` / ``from_pretrained`` of :class:`~mmjepa.models.MMJepaModel`."""

    def save_pretrained(self, save_directory: str | Path, *args: Any, processor: MMJepaProcessor | None = None,
                        embedding_only: bool = False, model_card: bool = True, metrics: dict[str, Any] | None = None,
                        push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write the model, its processor and a model card into ``save_directory``.

        ``processor``: the one to save (default: built from the config; a text modality's tokenizer
        is then loaded from the folder its options name). ``embedding_only``: keep only the EMA
        target encoders and the embedding centres. ``model_card``: write ``README.md`` (unless the
        folder holds one that mmjepa did not write); ``metrics`` (or a ``metrics.json`` in the folder) go into it.
        ``push_to_hub=True, repo_id="org/name"``: then upload the folder.
        """
        folder = Path(save_directory)
        if processor is None:
            processor = MMJepaProcessor.from_config(self.config)
        saved = {name: entry["saved"] for name, entry in processor.to_dict()["modalities"].items()}
        config = self.config
        original = (copy.deepcopy(config.modalities), copy.deepcopy(config.backbones), config.checkpoint_contents)
        try:
            for name, opts in config.modalities.items():
                config.modalities[name] = portable_options(opts, get_modality(name).config_class, saved.get(name, False))
            for entry in config.backbones.values():  # the full transformers config is saved: a local
                ref = entry.get("pretrained")           # folder is provenance that would not travel
                if ref and not str(ref).startswith("pkg:") and looks_local(str(ref)):
                    entry["pretrained"] = None
            if embedding_only:
                state = kwargs.pop("state_dict", None) or self.state_dict()
                kwargs["state_dict"] = {k: v for k, v in state.items() if k.startswith(EMBEDDING_KEYS)}
                config.checkpoint_contents = "embedding"
            super().save_pretrained(folder, *args, **kwargs)
        finally:
            config.modalities, config.backbones, config.checkpoint_contents = original
        processor.save_pretrained(folder)
        if model_card:
            write_card(self, folder, metrics)
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", None) or folder.name
            upload_folder(folder, repo_id, **{k: kwargs[k] for k in ("token", "private", "commit_message") if k in kwargs})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any,
                        modalities: list[str] | None = None, **kwargs: Any):
        """``PreTrainedModel.from_pretrained`` (safetensors only), optionally with only some
        ``modalities``; an embedding-only checkpoint gets context encoders equal to its targets.

        ``allow_pickle=True`` also reads PyTorch pickle weights (``pytorch_model.bin``) when the
        folder or repository has no safetensors file, always through ``torch.load(weights_only=True)``:
        tensors and plain containers only, anything else in the pickle is refused."""
        allow_pickle = bool(kwargs.pop("allow_pickle", False))
        if kwargs.get("weights_only", True) is not True:
            raise ValueError("mmjepa never unpickles arbitrary objects: weights_only=False is refused "
                             "(save the weights as safetensors instead)")
        kwargs["weights_only"] = True
        if allow_pickle:
            if kwargs.get("use_safetensors") is True:
                raise ValueError("allow_pickle=True and use_safetensors=True contradict each other: give one")
            kwargs["use_safetensors"] = None  # safetensors first, then pytorch_model.bin
        else:
            kwargs.setdefault("use_safetensors", True)
            if kwargs.get("use_safetensors") is not True:
                raise ValueError("mmjepa loads safetensors weights only (pickle files can run code); pass "
                                 "allow_pickle=True to read PyTorch .bin weights with torch.load(weights_only=True)")
            _refuse_pickle_only_folder(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        hub = {k: kwargs[k] for k in HUB_KWARGS if kwargs.get(k) is not None}
        config = kwargs.pop("config", None) or cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub)
        config.resolve_saved_paths(pretrained_model_name_or_path)  # also when AutoModel loaded the config
        unexpected, missing = [], []
        if modalities is not None:
            dropped = [m for m in config.modalities if m not in modalities]
            full, config = config, config.subset(modalities)
            # the left-out modalities' weights and the heads of the objectives that no longer apply
            unexpected += [re.escape(f"{part}.{m}.") for m in dropped for part in ("encoders", "target_encoders")]
            unexpected += [re.escape(f"centers.{kind}_{m}") for m in dropped for kind in ("center", "count")]
            unexpected += [re.escape(f"objectives.{o}.") for o in full.objectives if o not in config.objectives]
        if config.checkpoint_contents == "embedding":
            missing += [r"^encoders\.", r"^predictor\.", r"^objectives\."]
        saved = cls._keys_to_ignore_on_load_unexpected, cls._keys_to_ignore_on_load_missing
        cls._keys_to_ignore_on_load_unexpected = list(saved[0] or []) + unexpected
        cls._keys_to_ignore_on_load_missing = list(saved[1] or []) + missing
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)
        except pickle.UnpicklingError as e:  # torch.load(weights_only=True) met something that is not a tensor
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{pretrained_model_name_or_path}: refusing pickle weights that hold more than tensors "
                             f"(torch.load(weights_only=True): {first})") from None
        finally:
            cls._keys_to_ignore_on_load_unexpected, cls._keys_to_ignore_on_load_missing = saved
        if model.config.checkpoint_contents == "embedding":
            with torch.no_grad():
                for name in model.modality_names:
                    model.encoders[name].load_state_dict(model.target_encoders[name].state_dict())
        return model


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def _refuse_pickle_only_folder(path: str | Path, subfolder: str = "") -> None:
    """A local folder holding pickle weights and no safetensors file: say why it is not read and
    how to opt in (rather than transformers' "no file named model.safetensors")."""
    folder = Path(path) / subfolder
    if not folder.is_dir() or any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES)
                     or p.name.endswith(".bin.index.json"))
    if pickles:
        raise ValueError(f"{folder} holds pickle weights ({', '.join(pickles)}) and no model.safetensors: mmjepa "
                         "loads safetensors only, since unpickling can run code; pass allow_pickle=True to read "
                         "pytorch_model.bin through torch.load(weights_only=True), or convert it to safetensors")


def write_card(model: Any, folder: Path, metrics: dict[str, Any] | None = None, license: str = "apache-2.0",
               repo_id: str | None = None) -> None:
    """(Re)write the model card ``folder/README.md`` of ``model``, unless the folder holds one that
    mmjepa did not write; ``metrics`` default to the folder's ``metrics.json``."""
    if _written_by_someone_else(folder / CARD_FILE):
        return
    if metrics is None and (folder / METRICS_FILE).is_file():
        metrics = json.loads((folder / METRICS_FILE).read_text())
    sizes = {"total": model.num_parameters(),
             **{m: sum(p.numel() for p in model.target_encoders[m].parameters()) for m in model.modality_names}}
    (folder / CARD_FILE).write_text(card_text(model.config, folder, metrics=metrics, license=license,
                                              repo_id=repo_id, num_parameters=sizes))


def upload_folder(folder: Path, repo_id: str, token: str | None = None, private: bool | None = None,
                  commit_message: str | None = None) -> str:
    """Create the Hub repository (if missing) and upload ``folder`` into it; returns the repo id."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message or "Upload mmjepa model")
    return repo_id


def run_push(args: Any) -> int:
    """``mmjepa push MODEL_DIR REPO_ID``: refresh the model card (a README.md you wrote is kept) and
    upload the folder as it is (weights, processor, recipe, training state, card)."""
    folder = Path(args.model)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; give a folder written by save_pretrained or training's export")
    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    model = AutoModel.from_pretrained(folder)  # an MMJepaModel (registered by mmjepa.models)
    write_card(model, folder, metrics, license=args.license, repo_id=args.repo_id)
    files = sorted(p.name for p in folder.iterdir())
    if args.dry_run:
        print(f"would upload to {args.repo_id}: {', '.join(files)}")
        return 0
    repo = upload_folder(folder, args.repo_id, token=args.token, private=args.private or None)
    print(f"uploaded {len(files)} files to https://huggingface.co/{repo}")
    return 0
