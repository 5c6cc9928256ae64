"""``MMJepaProcessor``: one object that prepares every modality of a model for it, saved and
loaded with the model's folder as a transformers processor.

Design decisions:
- one processor per modality, built by its plug-in; each plug-in names its keyword (``images=``,
  ``text=``, ``audio=`` for the built-in ones) and any extra keywords (``sampling_rate=``); the
  processor routes them and returns one ``BatchFeature``;
- a transformers ``ProcessorMixin``: ``save_pretrained`` writes ``processor_config.json`` (every
  modality's options, plus the nested ``image_processor`` / ``feature_extractor`` entries that
  ``AutoImageProcessor`` / ``AutoFeatureExtractor`` read) and the tokenizer's files; ``from_pretrained``
  (also through ``AutoProcessor``, from a folder or a Hub id, offline from the Hub cache) rebuilds it;
- which transformers role a modality's processor plays is its plug-in's ``hf_role``; the sub-
  processors of a saved folder depend on the model's modalities, so loading goes by the saved
  list of modalities, not by a fixed ``__init__`` signature;
- nothing in a saved folder points outside it: options that name files (a tokenizer folder) are
  written as ``"."`` (this folder) when the files were saved here, else left empty;
- no import of the model classes: the model imports this module to save its processor beside it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import cached_file

from .modalities import get_modality, registered_modalities

PROCESSOR_FILE = "processor_config.json"
CONFIG_FILE = "config.json"
# keyword arguments of from_pretrained that locate files (passed on to every file lookup)
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision", "subfolder")
HERE = "."  # a path option saved as "." names the folder (or Hub repository) it was loaded from


def path_options(config_class: type) -> list[str]:
    """Names of the options of a modality's config dataclass that are file or folder paths."""
    return [f.name for f in dataclasses.fields(config_class) if f.metadata.get("path")]


def portable_options(options: dict[str, Any], config_class: type, saved_here: bool) -> dict[str, Any]:
    """``options`` with every path option made portable: ``"."`` when its files were saved in the
    folder being written (``saved_here``), else None (a path outside would not travel)."""
    out = dict(options)
    for name in path_options(config_class):
        if out.get(name):
            out[name] = HERE if saved_here else None
    return out


class MMJepaProcessor(ProcessorMixin):
    """Holds one processor per modality and routes inputs to them.

    ``MMJepaProcessor.from_config(config)`` builds the processors that a model config describes;
    ``MMJepaProcessor.from_pretrained(folder_or_hub_id)`` (or ``AutoProcessor.from_pretrained``) loads a
    saved one; ``processor(images=..., text=..., audio=..., sampling_rate=...)`` returns the model
    inputs. The transformers sub-processors are also attributes: ``processor.image_processor``,
    ``processor.feature_extractor``, ``processor.tokenizer`` (those the model has).
    """

    def __init__(self, processors: dict[str, Any]):
        self.chat_template = None
        self.processors = dict(processors)
        self.plugins = {name: get_modality(name) for name in self.processors}
        self.arg_to_modality = {mod.processor_arg: name for name, mod in self.plugins.items()}
        self.roles: dict[str, str] = {}  # modality -> the transformers role its processor plays here
        for name, mod in self.plugins.items():
            if mod.hf_role and mod.hf_role not in self.roles.values():
                self.roles[name] = mod.hf_role
                setattr(self, mod.hf_role, mod.hf_object(self.processors[name]))

    @classmethod
    def from_config(cls, config: Any, **processors: Any) -> "MMJepaProcessor":
        """Processors for every modality of ``config`` (an ``MMJepaConfig``); ``processors`` (by
        modality name) replace built ones."""
        built = {}
        for name in config.modalities:
            built[name] = processors.get(name) or get_modality(name).build_processor(config.modality_config(name))
        return cls(built)

    # ------------------------------------------------------------------ calling
    def __call__(self, return_tensors: str | None = "pt", **inputs: Any) -> BatchFeature:
        extra_args = {k for mod in self.plugins.values() for k in mod.processor_kwargs}
        unknown = sorted(set(inputs) - set(self.arg_to_modality) - extra_args)
        if unknown:
            elsewhere = {get_modality(m).processor_arg: m for m in registered_modalities()}
            other = [f"{a}= ({elsewhere[a]})" for a in unknown if a in elsewhere]
            if other:
                raise ValueError(f"this processor has no {', '.join(other)} modality; it has "
                                 f"{', '.join(f'{a}= ({m})' for a, m in self.arg_to_modality.items())}")
            raise ValueError(f"unknown argument(s) {unknown}; this processor takes "
                             f"{sorted(self.arg_to_modality)} (and {sorted(extra_args) or 'nothing else'})")
        out = BatchFeature()
        for arg, name in self.arg_to_modality.items():
            value = inputs.get(arg)
            if value is None:
                continue
            mod = self.plugins[name]
            kwargs = {k: inputs[k] for k in mod.processor_kwargs if inputs.get(k) is not None}
            out.update(self.processors[name](value, **kwargs))
        if not out:
            raise ValueError(f"give at least one of {', '.join(f'{a}=' for a in self.arg_to_modality)}")
        return out

    @property
    def model_input_names(self) -> list[str]:
        return [get_modality(name).input_key for name in self.processors]

    # ------------------------------------------------------------------ saving
    def _options(self, name: str) -> dict[str, Any] | None:
        cfg = getattr(self.processors[name], "cfg", None)
        return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None

    def to_dict(self) -> dict[str, Any]:
        """What ``processor_config.json`` holds: each modality's role and options (paths made
        portable), and the nested entries of the image processor and feature extractor."""
        out: dict[str, Any] = {"processor_class": type(self).__name__, "modalities": {}}
        for name, mod in self.plugins.items():
            role = self.roles.get(name)
            obj = mod.hf_object(self.processors[name]) if role else None
            options = self._options(name)
            if options is not None:
                options = portable_options(options, mod.config_class, saved_here=obj is not None)
            out["modalities"][name] = {"role": role, "saved": obj is not None, "options": options}
            if role and role != "tokenizer" and obj is not None:
                out[role] = obj.to_dict()
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | Path, push_to_hub: bool = False, **kwargs: Any) -> list[str]:
        """Write ``processor_config.json`` and the tokenizer's files into ``save_directory``
        (``push_to_hub=True, repo_id=...``: then upload them)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, role in self.roles.items():
            obj = self.plugins[name].hf_object(self.processors[name])
            if role == "tokenizer" and obj is not None:
                written += [str(f) for f in obj.save_pretrained(folder)]
        (folder / PROCESSOR_FILE).write_text(self.to_json_string())
        written.append(str(folder / PROCESSOR_FILE))
        if push_to_hub:
            self.push_to_hub(kwargs.pop("repo_id", folder.name), **kwargs)
        return written

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "MMJepaProcessor":
        """Load the processor saved in a folder or Hub repository (offline from the Hub cache when
        ``HF_HUB_OFFLINE=1``). A folder written by an older mmjepa without ``processor_config.json``
        is rebuilt from its ``config.json``."""
        ref = str(pretrained_model_name_or_path)
        hub = {k: kwargs[k] for k in HUB_KWARGS if kwargs.get(k) is not None}
        saved_file = cached_file(ref, PROCESSOR_FILE, _raise_exceptions_for_missing_entries=False, **hub)
        if saved_file is not None:
            saved = json.loads(Path(saved_file).read_text())
            entries = saved.get("modalities")
            if not isinstance(entries, dict) or not entries:
                raise ValueError(f"{ref}: {PROCESSOR_FILE} lists no modalities; was it written by mmjepa?")
        else:
            config_file = cached_file(ref, CONFIG_FILE, _raise_exceptions_for_missing_entries=False, **hub)
            if config_file is None:
                raise ValueError(f"{ref}: neither {PROCESSOR_FILE} nor {CONFIG_FILE} found; not an mmjepa folder")
            modalities = json.loads(Path(config_file).read_text()).get("modalities") or {}
            entries = {name: {"role": get_modality(name).hf_role, "saved": False, "options": opts}
                       for name, opts in modalities.items()}
        processors = {}
        for name, entry in entries.items():
            mod = get_modality(name)
            options = dict(entry.get("options") or {})
            for key in path_options(mod.config_class):
                if options.get(key) == HERE:
                    options[key] = ref
            cfg = mod.make_config(options)
            if entry.get("role") == "tokenizer" and entry.get("saved"):  # files of their own
                processors[name] = mod.from_hf_object(cfg, AutoTokenizer.from_pretrained(ref, **hub))
            else:  # an image processor or feature extractor is its options
                processors[name] = mod.build_processor(cfg)
        return cls(processors)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}: {type(p).__name__}' for n, p in self.processors.items())})"

