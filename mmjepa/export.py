"""Export one modality's embedding tower to ONNX or to a ``torch.export`` program.

An embedding tower is what serving needs of a model for one modality: the model input (and its
padding mask) in, the embedding ``model.embed(...)[m]`` out — no predictor, no objectives, no
other modality. ``mmjepa export MODEL_DIR --modality NAME --output PATH`` writes one.

Design decisions:
- the tower (:class:`EmbeddingTower`) holds one encoder of the model (the EMA target by default,
  as ``model.embed``; the context encoder on request) and computes exactly ``model.embed``: the
  plug-in's pooling over real tokens, minus the modality's centre, L2-normalised; optionally the
  token latents of ``model.encode`` as a second output;
- its inputs are found through the plug-in, never by modality name: the model input is
  ``input_key``; the padding mask is the one of the plug-in's ``sample_keys`` that its
  ``valid_tokens`` reads. The mask is int64 under transformers' name ``attention_mask`` (what
  tokenizers return) and bool under any other name (what mmjepa's processors return);
- example inputs are built from the plug-in's embed alone (its input layer and token grid), so a
  model exports without data; a plug-in may provide ``example_inputs(cfg, batch_size)`` instead;
- dynamic axes: the batch always; a sequence axis where the encoder, run on a shorter input along
  an axis with one token per position, gives one token per position (the token axis of token
  ids, up to their ``max_length``). Fixed patch grids (pixels, spectrogram frames) stay fixed;
- one capture: ``torch.export`` (non-strict). The ONNX file is converted from that same program
  by torch's dynamo ONNX exporter, so both formats have one graph and the same dynamic dims.
  Opset 20 by default; 18-22 for a tower with a padding mask (from 23 attention is written as
  ONNX's Attention op, whose onnxruntime kernels do not broadcast a (B, 1, 1, N) mask);
- an input check in an embed that reads tensor values (a token-id range test) cannot be traced:
  then ``torch.export.draft_export`` keeps the branch the (valid) example input takes and the
  check is left out of the graph, with a warning — out-of-range ids then fail in the runtime's
  gather instead of with mmjepa's message;
- every export checks itself on another batch (other size, padding, shorter sequence) against
  eager PyTorch; the ONNX file carries its modality, inputs, outputs, width D, dynamic axes and
  the model's identity (the hash galleries are bound to) in ``metadata_props``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.export import ExportedProgram
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from .modalities import get_modality
from .models import MMJepaModel
from .paths import local_or_hub
from .retrieval.index import model_identity

EMBEDDINGS, TOKENS = "embeddings", "last_hidden_state"  # output names (the second as transformers')
BATCH_AXIS, TOKEN_AXIS = "batch", "tokens"
HF_MASK_KEY = "attention_mask"  # transformers' padding mask: int64, 1 = real token
ATOL = 1e-4  # what "equal" means for the self-checks
MIN_OPSET, DEFAULT_OPSET = 18, 20  # torch's dynamo ONNX exporter writes 18+; 20 is its default in torch 2.11
# from opset 23 SDPA becomes ONNX Attention, whose onnxruntime kernels broadcast a mask over its
# first two dims only (not a (B, 1, 1, N) key-padding mask): masked towers keep the decomposed form
MASKED_ATTENTION_OPSETS = range(MIN_OPSET, 23)
INSTALL_HINT = "pip install 'mmjepa[export]'"


# ----------------------------------------------------------------------------- the tower
def mask_key(modality: str) -> str | None:
    """The batch key of the plug-in's padding mask: the one of its ``sample_keys`` that its
    ``valid_tokens`` reads (None when its tokens are always all real)."""
    plugin = get_modality(modality)
    for key in plugin.sample_keys:
        if plugin.valid_tokens({key: torch.ones(1, 1, dtype=torch.bool)}) is not None:
            return key
    return None


class EmbeddingTower(nn.Module):
    """One modality of ``model`` as a module: ``forward(inputs[, mask]) -> embeddings (B, D)``
    (and the token latents (B, N, D) with ``return_tokens``), equal to ``model.embed`` /
    ``model.encode`` on ``{input_key: inputs, mask_key: mask}``.

    The encoder is the model's own module (not a copy), the centre a copy of the model's at
    construction; ``center`` and ``normalize`` are the options of ``model.embed``.
    ``input_names`` / ``output_names`` name the arguments and outputs.
    """

    def __init__(self, model: MMJepaModel, modality: str, use_context_encoder: bool = False,
                 return_tokens: bool = False, normalize: bool = True, center: bool = True):
        super().__init__()
        if modality not in model.modality_names:
            raise ValueError(f"this model has no {modality!r} modality (it has {model.modality_names})")
        self.modality = modality
        self.plugin = get_modality(modality)
        self.cfg = model.config.modality_config(modality)
        self.encoder = (model.encoders if use_context_encoder else model.target_encoders)[modality]
        self.use_context_encoder = use_context_encoder
        self.register_buffer("center", model.centers.get(modality).detach().clone() if center else None)
        self.normalize, self.return_tokens = normalize, return_tokens
        self.mask_key = mask_key(modality)
        self.input_names = [self.plugin.input_key] + ([self.mask_key] if self.mask_key else [])
        self.output_names = [EMBEDDINGS] + ([TOKENS] if return_tokens else [])
        self.dim = int(model.config.hidden_size)

    def forward(
        self,
        inputs: torch.Tensor,  # the model input: (B, C, H, W) pixels, (B, F, T) features, (B, L) ids ...
        mask: torch.Tensor | None = None,  # (B, N) padding mask, nonzero = real token
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        valid = None if mask is None else self.plugin.valid_tokens({self.mask_key: mask})  # (B, N) bool
        h = self.encoder(inputs, None, valid)  # (B, N, D) token latents
        pooled = self.plugin.pool(h, valid, self.cfg)  # (B, D)
        if self.center is not None:
            pooled = pooled - self.center
        emb = F.normalize(pooled, dim=-1) if self.normalize else pooled  # (B, D)
        return (emb, h) if self.return_tokens else emb


# ----------------------------------------------------------------------------- example inputs
def _input_layer(embed: nn.Module) -> nn.Module | None:
    """The first token-id table or patch convolution of a plug-in's embed."""
    kinds = (nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return next((m for m in embed.modules() if isinstance(m, kinds)), None)


def _candidate_inputs(embed: nn.Module, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    """Model inputs the embed may take, guessed from its input layer and its token grid."""
    layer, n = _input_layer(embed), int(embed.num_tokens)
    if isinstance(layer, nn.Embedding):  # token ids (B, N)
        yield torch.randint(0, layer.num_embeddings, (batch_size, n), generator=g)
    elif layer is not None:  # patches: each axis is the tokens along it times the stride
        grid = tuple(getattr(embed, "grid", None) or (n,))
        if len(grid) == len(layer.stride):
            size = tuple(t * s for t, s in zip(grid, layer.stride))
            yield torch.randn(batch_size, layer.in_channels, *size, generator=g)  # (B, C, *size)
            if layer.in_channels == 1:
                yield torch.randn(batch_size, *size, generator=g)  # (B, *size): the embed adds the channel


def example_inputs(tower: EmbeddingTower, batch_size: int = 2, tokens: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random inputs of the tower's modality -> (model input, mask or None), on its device.

    The plug-in's ``example_inputs(cfg, batch_size)`` (a dict holding ``input_key``) when it has
    one; otherwise the layout is inferred from the plug-in's embed (a token table: ids (B, N); a
    patch convolution: (B, C, *grid x stride), or (B, *grid x stride) with one channel) and checked
    by running that embed. ``tokens``: cut the sequence axis to that length. The mask pads the
    last quarter of the last sample (every sample keeps real tokens)."""
    plugin, cfg = tower.plugin, tower.cfg
    embed = plugin.build_embed(cfg, 4, add_positions=False)  # a narrow copy: only its input layout matters
    g = torch.Generator().manual_seed(seed)
    hook = getattr(plugin, "example_inputs", None)
    candidates = [hook(cfg, batch_size)[plugin.input_key]] if hook is not None else \
        _candidate_inputs(embed, batch_size, g)
    x = None
    for candidate in candidates:
        try:
            if tuple(embed(candidate).shape[:2]) == (batch_size, embed.num_tokens):
                x = candidate
                break
        except (ValueError, RuntimeError):
            continue
    if x is None:
        raise ValueError(f"cannot infer the input shape of the {tower.modality} modality from its embed: give its "
                         f"plug-in a classmethod example_inputs(cfg, batch_size) -> {{{plugin.input_key!r}: tensor}}")
    if tokens is not None:
        x = x.narrow(sequence_axis(tower, x), 0, tokens)
    mask = None
    if tower.mask_key is not None:
        n = embed(x).shape[1]
        mask = torch.ones(batch_size, n, dtype=torch.long if tower.mask_key == HF_MASK_KEY else torch.bool)
        mask[-1, max(1, n - n // 4):] = 0  # (B, N), the last sample padded
    device = next(tower.encoder.parameters()).device
    return x.to(device), (None if mask is None else mask.to(device))


def sequence_axis(tower: EmbeddingTower, x: torch.Tensor) -> int | None:
    """The axis of the model input ``x`` along which the encoder also takes shorter inputs, one
    token per position (found by running it); None when every axis is fixed."""
    with torch.no_grad():
        n = tower.encoder(x, None, None).shape[1]
        for axis in range(1, x.dim()):
            if x.shape[axis] != n or n < 2:
                continue
            short = n - max(1, n // 3)
            try:
                h = tower.encoder(x.narrow(axis, 0, short), None, None)  # (B, short, D) if the axis is free
            except (ValueError, RuntimeError, IndexError):
                continue
            if h.shape[1] == short:
                return axis
    return None


# ----------------------------------------------------------------------------- capture
@contextlib.contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode for a while, then every submodule back in its own mode (the model's
    EMA targets stay in eval mode whatever the tower's flag says)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Torch's export loggers held at ERROR (a failed trace prints its whole graph), and its
    deprecation notices about its own internals silenced."""
    names = ("torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes", "torch.onnx", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _trace(tower: EmbeddingTower, args: tuple, dynamic_shapes: tuple) -> ExportedProgram:
    """``torch.export.export``; when the tower tests input values (an embed's token-id range
    check), ``draft_export``, which fixes such tests to the branch the valid example takes, with
    a warning naming them."""
    with _quiet():
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # a failed export prints its partial graph there
                return torch.export.export(tower, args, dynamic_shapes=dynamic_shapes)
        except GuardOnDataDependentSymNode:
            program = torch.export.draft_export(tower, args, dynamic_shapes=dynamic_shapes)
    where = []  # best effort: draft_export's report is not public API
    for failure in getattr(getattr(program, "_report", None), "failures", None) or []:
        stack = (getattr(failure, "data", None) or {}).get("user_stack") or []
        if stack and isinstance(stack[-1], dict) and stack[-1].get("loc"):
            where.append(str(stack[-1]["loc"]).strip())
    checks = "; ".join(dict.fromkeys(where)) or "a test of tensor values"
    warnings.warn(f"torch.export: the {tower.modality} tower tests input values ({checks}); the exported graph keeps "
                  "the branch a valid input takes and leaves the test out", stacklevel=4)
    return program


@dataclasses.dataclass
class Capture:
    """One tower traced once: ``program`` (a ``torch.export.ExportedProgram``), the example
    ``args`` it was traced on and ``dynamic_axes`` ``{input or output name: {axis: dim name}}``.
    :meth:`save_program` and :meth:`save_onnx` write the two formats of this one graph."""

    model: MMJepaModel
    tower: EmbeddingTower
    program: ExportedProgram
    args: tuple[torch.Tensor, ...]
    dynamic_axes: dict[str, dict[int, str]]

    @property
    def sequence_axis(self) -> int | None:
        """The dynamic sequence axis of the model input, or None."""
        dims = self.dynamic_axes[self.tower.input_names[0]]
        return next((a for a, name in dims.items() if name == TOKEN_AXIS), None)

    def metadata(self) -> dict[str, str]:
        """What a runtime needs to know of the export, as strings under ``mmjepa.*`` keys."""
        t = self.tower
        options = {k: v for k, v in dataclasses.asdict(t.cfg).items() if k != "tokenizer"}  # a path: not portable
        return {
            "mmjepa.modality": t.modality,
            "mmjepa.inputs": json.dumps(t.input_names),
            "mmjepa.outputs": json.dumps(t.output_names),
            "mmjepa.dim": str(t.dim),
            "mmjepa.dynamic_axes": json.dumps(self.dynamic_axes),
            "mmjepa.encoder": "context" if t.use_context_encoder else "target",
            "mmjepa.normalized": json.dumps(t.normalize),
            "mmjepa.centered": json.dumps(t.center is not None),
            "mmjepa.model_identity": model_identity(self.model),  # as galleries record it
            "mmjepa.modality_options": json.dumps(options, default=str),
            "mmjepa.version": _version(),
        }

    def check(self) -> float:
        """Max |program - eager tower| on a check batch (:func:`check_inputs`); ValueError above 1e-4."""
        args = check_inputs(self.tower, self.sequence_axis)
        with _eval(self.tower), torch.no_grad():
            return _check("program", _max_diff(self.program.module()(*args), self.tower(*args)))

    def save_program(self, path: str | Path) -> Path:
        """``torch.export.save`` the program, the metadata as JSON in ``extra_files["mmjepa.json"]``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(self.program, path, extra_files={"mmjepa.json": json.dumps(self.metadata())})
        return path

    def save_onnx(self, path: str | Path, opset: int | None = None) -> Path:
        """Convert the program with torch's dynamo ONNX exporter and write it at ``path``, the dims
        named ``batch`` / ``tokens`` and the metadata in ``metadata_props``. ``opset`` (default 20):
        18 to 22 for a tower with a padding mask (see ``MASKED_ATTENTION_OPSETS``), 18 or later without."""
        require_onnx()
        t, opset = self.tower, check_opset(self.tower.modality, opset)
        with _quiet():
            onnx_program = torch.onnx.export(self.program, self.args, input_names=t.input_names,
                                             output_names=t.output_names, opset_version=opset, dynamo=True,
                                             verbose=False)
        _rename_dims(onnx_program.model, self._symbol_names())
        onnx_program.model.metadata_props.update(self.metadata())
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx_program.save(str(path))  # initializers go to a side file only above ONNX's 2 GB limit
        return path

    def _symbol_names(self) -> dict[str, str]:
        """The program's shape symbols of the dynamic input axes (``s23``) -> their names."""
        placeholders = [n for n in self.program.graph.nodes if n.op == "placeholder"]
        out = {}
        for node, name in zip(placeholders[-len(self.args):], self.tower.input_names):  # user inputs come last
            val = node.meta.get("val")
            for axis, dim in self.dynamic_axes[name].items():
                if val is not None:
                    out[str(val.shape[axis])] = dim
        return out


def capture(model: MMJepaModel, modality: str, use_context_encoder: bool = False, return_tokens: bool = False,
            batch_size: int = 2) -> Capture:
    """Trace the :class:`EmbeddingTower` of ``modality`` with ``torch.export`` (non-strict): a
    dynamic batch and, where the encoder allows one, a dynamic sequence axis (1 to the modality's
    maximum length)."""
    tower = EmbeddingTower(model, modality, use_context_encoder, return_tokens)
    x, mask = example_inputs(tower, batch_size)  # (B, ...) model input, (B, N) mask or None
    axis = sequence_axis(tower, x)
    batch = torch.export.Dim(BATCH_AXIS)
    tokens = torch.export.Dim(TOKEN_AXIS, min=1, max=x.shape[axis]) if axis is not None else None
    dims_x = {0: batch, **({axis: tokens} if tokens is not None else {})}
    dims_mask = {0: batch, **({1: tokens} if tokens is not None else {})}
    args = (x,) if mask is None else (x, mask)
    with _eval(tower), torch.no_grad():
        program = _trace(tower, args, (dims_x,) if mask is None else (dims_x, dims_mask))
    axes = {tower.input_names[0]: dims_x}
    if mask is not None:
        axes[tower.input_names[1]] = dims_mask
    axes[EMBEDDINGS] = {0: batch}
    if return_tokens:
        axes[TOKENS] = {0: batch, **({1: tokens} if tokens is not None else {})}
    named = {k: {a: d.__name__ for a, d in v.items()} for k, v in axes.items()}
    return Capture(model, tower, program, args, named)


def check_inputs(tower: EmbeddingTower, seq_axis: int | None, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """A batch unlike the export's example: 3 samples, padding, and a shorter sequence when the
    sequence axis is dynamic."""
    tokens = None
    if seq_axis is not None:
        n = example_inputs(tower, 1)[0].shape[seq_axis]
        tokens = n - max(1, n // 3)
    x, mask = example_inputs(tower, 3, tokens=tokens, seed=seed)
    return (x,) if mask is None else (x, mask)


def _max_diff(a: Any, b: Any) -> float:
    a, b = (a if isinstance(a, (tuple, list)) else [a]), (b if isinstance(b, (tuple, list)) else [b])
    return max(float((torch.as_tensor(u).cpu().float() - torch.as_tensor(v).cpu().float()).abs().max())
               for u, v in zip(a, b))


def _check(what: str, diff: float) -> float:
    if not diff <= ATOL:  # NaN too
        raise ValueError(f"the exported {what} differs from PyTorch by {diff:.3g} (> {ATOL}) on a check batch")
    return diff


def _version() -> str:
    try:
        return importlib.metadata.version("mmjepa")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree not installed
        return "unknown"


# ----------------------------------------------------------------------------- the two formats
def export_program(model: MMJepaModel, modality: str, path: str | Path | None = None, *,
                   use_context_encoder: bool = False, return_tokens: bool = False) -> ExportedProgram:
    """The embedding tower of ``modality`` as a ``torch.export.ExportedProgram`` (dynamic batch;
    dynamic sequence where the modality has one), checked against PyTorch on another batch. With
    ``path``, also saved (``torch.export.save``; the metadata as JSON in ``extra_files
    ["mmjepa.json"]``). Run it as ``program.module()(inputs[, mask])``."""
    cap = capture(model, modality, use_context_encoder, return_tokens)
    cap.check()
    if path is not None:
        cap.save_program(path)
    return cap.program


def export_onnx(model: MMJepaModel, modality: str, path: str | Path, *, use_context_encoder: bool = False,
                return_tokens: bool = False, opset: int | None = None, check: bool = True) -> Path:
    """Write the embedding tower of ``modality`` as an ONNX file at ``path``.

    Inputs: the plug-in's model input and its padding mask, named after their batch keys
    (``pixel_values``, ``input_ids`` + ``attention_mask`` ...); outputs ``embeddings`` (B, D) and,
    with ``return_tokens``, ``last_hidden_state`` (B, N, D). Dynamic axes ``batch`` and, where the
    modality has one, ``tokens``; ``metadata_props`` hold :meth:`Capture.metadata`. ``opset``: the
    ONNX opset (default 20; 18-22 for a modality with a padding mask). ``check``: compare
    onnxruntime with PyTorch on another batch, when onnxruntime is installed (ValueError above 1e-4)."""
    require_onnx()
    check_opset(modality, opset)  # before the seconds of tracing
    path = capture(model, modality, use_context_encoder, return_tokens).save_onnx(path, opset)
    if check and importlib.util.find_spec("onnxruntime") is not None:
        check_onnx(path, model)
    return path


def check_opset(modality: str, opset: int | None) -> int:
    """The opset to write ``modality``'s tower with (default 20); ValueError for one the exporter
    cannot write or onnxruntime cannot run (see ``MASKED_ATTENTION_OPSETS``)."""
    opset = DEFAULT_OPSET if opset is None else opset
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: the ONNX exporter writes opset {MIN_OPSET} or later")
    if mask_key(modality) is not None and opset not in MASKED_ATTENTION_OPSETS:
        raise ValueError(f"opset {opset}: from opset 23 attention is written as ONNX's Attention op, whose onnxruntime "
                         f"kernels do not broadcast the (B, 1, 1, N) padding mask of the {modality} tower; use opset "
                         f"{MASKED_ATTENTION_OPSETS.start}-{MASKED_ATTENTION_OPSETS.stop - 1}")
    return opset


def require_onnx() -> None:
    """ImportError naming the install line when the ONNX exporter's packages are missing."""
    for name in ("onnx", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise ImportError(f"ONNX export needs the {name} package: {INSTALL_HINT}") from None


def _rename_dims(onnx_model: Any, names: dict[str, str]) -> None:
    """Rename symbolic dims in every value's shape of an ``onnx_ir`` model (``s23`` -> ``batch``,
    inside expressions such as ``s23*s27`` too)."""
    if not names:
        return
    import onnx_ir as ir  # comes with onnxscript (require_onnx)

    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    graph = onnx_model.graph
    for value in [*graph.inputs, *graph.outputs, *(v for node in graph.all_nodes() for v in node.outputs)]:
        if value.shape is None:
            continue
        value.shape = ir.Shape([pattern.sub(lambda m: names[m.group(1)], d.value)
                                if isinstance(d, ir.SymbolicDim) and isinstance(d.value, str) else d
                                for d in value.shape])


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``mmjepa.*`` metadata of an ONNX file written by :func:`export_onnx`, JSON-decoded,
    without the ``mmjepa.`` prefix."""
    import onnx

    out = {}
    for prop in onnx.load(str(path), load_external_data=False).metadata_props:
        if prop.key.startswith("mmjepa."):
            try:
                out[prop.key[len("mmjepa."):]] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[prop.key[len("mmjepa."):]] = prop.value
    return out


def check_onnx(path: str | Path, model: MMJepaModel) -> float:
    """Max |onnxruntime - PyTorch| of the ONNX file at ``path`` (written by :func:`export_onnx`
    from ``model``) on a check batch (:func:`check_inputs`); ValueError above 1e-4."""
    import onnxruntime as ort

    meta = read_metadata(path)
    tower = EmbeddingTower(model, meta["modality"], meta["encoder"] == "context", TOKENS in meta["outputs"],
                           meta["normalized"], meta["centered"])
    seq = next((int(a) for a, name in meta["dynamic_axes"][tower.input_names[0]].items() if name == TOKEN_AXIS), None)
    args = check_inputs(tower, seq)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {name: a.cpu().numpy() for name, a in zip(tower.input_names, args)})
    except Exception as err:  # noqa: BLE001 - onnxruntime's errors share no base class but Exception
        raise ValueError(f"onnxruntime cannot run {path}: {str(err).splitlines()[0]}") from None
    with _eval(tower), torch.no_grad():
        return _check("ONNX model", _max_diff(got, tower(*args)))


# ----------------------------------------------------------------------------- command line
def run(args: argparse.Namespace) -> int:
    """``mmjepa export MODEL_DIR --modality NAME --output PATH [--format onnx|torch] ...``."""
    ref = local_or_hub(args.model, "MODEL_DIR")
    if args.format == "onnx":
        try:
            require_onnx()  # said before the seconds of loading the model
        except ImportError as err:
            raise ValueError(str(err)) from None
    elif args.opset is not None:
        raise ValueError("--opset applies to --format onnx only")
    model = MMJepaModel.from_pretrained(ref)
    if args.modality not in model.modality_names:
        raise ValueError(f"the model {args.model} has no {args.modality!r} modality (it has "
                         f"{', '.join(model.modality_names)})")
    if args.format == "onnx":
        check_opset(args.modality, args.opset)  # before the seconds of tracing
    encoder = "context" if args.use_context_encoder else "target"
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", UserWarning)
        cap = capture(model, args.modality, args.use_context_encoder, args.tokens)
    for note in notes:  # one line each, not Python's two
        print(f"mmjepa export: note: {note.message}", file=sys.stderr)
    dynamic = "; ".join(f"{k}: {', '.join(f'{a}={n}' for a, n in v.items())}" for k, v in cap.dynamic_axes.items()
                        if k in cap.tower.input_names)
    done = f"exported the {args.modality} tower ({encoder} encoder) of {args.model} to {args.output}"
    if args.format == "torch":
        cap.check()
        cap.save_program(args.output)
        print(f"{done} [torch.export program; inputs {', '.join(cap.tower.input_names)}; dynamic axes {dynamic}]")
        return 0
    path = cap.save_onnx(args.output, args.opset)
    checked = ""
    if importlib.util.find_spec("onnxruntime") is not None:
        checked = f"; onnxruntime = PyTorch within {check_onnx(path, model):.1e}"
    print(f"{done} [ONNX opset {args.opset or DEFAULT_OPSET}; inputs {', '.join(cap.tower.input_names)}; dynamic axes "
          f"{dynamic}{checked}]")
    return 0
