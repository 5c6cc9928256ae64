"""Masked-span prediction: fill masked spans of a token modality (text) with the context encoder,
the predictor and the model's ``readout`` objective, and measure masked-token top-1 / top-5 accuracy.

- :func:`fill_spans`: token ids + a span mask -> top-k ids/probs per masked position, optionally
  conditioned on other modalities: raw values under their plug-in's processor keyword
  (``images=``, ``audio=`` with ``sampling_rate=``), run through the processor built from the
  model's options, or model inputs (``pixel_values=``, ``input_features=``); their full view (the
  context encoder on every token) joins the predictor's context, as the readout objective's
  ``context: all`` trains it (:func:`conditioning_inputs`);
- :func:`fill_spans_text`: strings with ``<mask>`` markers -> decoded top-k completions per span
  (one marker = one token; adjacent markers form one multi-token span), distinct and non-empty;
- :func:`masked_token_accuracy`: top-1/top-5 of any predictor of masked tokens on a fixed set of
  masked chunks (used for mmjepa, BERT and the unigram baseline alike);
- :func:`sequence_span_masks`, :func:`conditioned_hits`, :func:`paired_bootstrap`: masked-token hits
  per sequence on fixed span masks of variable-length sequences under several conditionings (with
  a sequence's own image, without, with another's), and a paired bootstrap interval of a difference;
- ``mmjepa eval spans --model DIR --text FILE``: :func:`run_spans`.

The span modality is the one the model's readout objective reads out; a tokenizer is checked
against the vocabulary fingerprint the model was trained with before any span is filled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import AutoTokenizer

from ..masking import SpanMasking, pack_indices
from ..modalities import get_modality, registered_modalities
from ..models import MMJepaModel
from ..models.encoder import encode_context, target_query_latents
from ..processing import MMJepaProcessor
from ..objectives import TokenReadout


def readout_of(model: Any) -> TokenReadout:
    """The model's (single) readout objective, or a ValueError that says what is missing."""
    readouts = [o for o in getattr(model, "objectives", {}).values() if isinstance(o, TokenReadout)]
    if not readouts:
        raise ValueError("this model has no readout objective (objectives.<name>.type: readout), so it cannot "
                         "fill spans; train it with one (a text model gets it by default)")
    if len(readouts) > 1:
        raise ValueError(f"this model reads out {[o.modality for o in readouts]}: fill_spans needs exactly one")
    return readouts[0]


def conditioning_inputs(model: Any, span: str, batch_size: int, inputs: dict[str, Any]) -> dict[str, Any]:
    """The keywords of :func:`fill_spans` that name other modalities -> their model inputs.

    For every modality of ``model`` but ``span``: its plug-in's ``processor_arg`` (``images=``) is
    raw input, run through the processor built from the model's options together with its
    ``processor_kwargs`` (``sampling_rate=``); its ``input_key`` and ``sample_keys``
    (``pixel_values=``, ``input_features_valid=``) are model inputs, taken as they are. ValueError
    for an unknown keyword (naming the accepted ones), for raw and model input of one modality
    together, and for a modality whose input does not hold ``batch_size`` samples.
    """
    plugins = {name: get_modality(name) for name in model.modality_names if name != span}
    raw_args = {mod.processor_arg: name for name, mod in plugins.items()}
    extra_args = {k: name for name, mod in plugins.items() for k in mod.processor_kwargs}
    model_keys = {k: name for name, mod in plugins.items() for k in (mod.input_key, *mod.sample_keys)}
    unknown = sorted(set(inputs) - set(raw_args) - set(extra_args) - set(model_keys))
    if unknown:
        accepted = ", ".join(f"{k}= ({n})" for k, n in {**raw_args, **extra_args, **model_keys}.items())
        known = {k: name for name in registered_modalities() for k in
                 (get_modality(name).processor_arg, get_modality(name).input_key)}
        missing = sorted({known[k] for k in unknown if k in known})
        hint = f" (the model has no {', '.join(missing)} modality)" if missing else ""
        raise ValueError(f"unknown keyword(s) {unknown}{hint}: besides the {span} tokens, this model takes "
                         f"{accepted or 'nothing (it has no other modality)'}")
    for arg, name in raw_args.items():
        if inputs.get(arg) is not None and inputs.get(plugins[name].input_key) is not None:
            raise ValueError(f"give the {name} modality either raw values ({arg}=) or its model input "
                             f"({plugins[name].input_key}=), not both")
    for k, name in extra_args.items():
        if inputs.get(k) is not None and inputs.get(plugins[name].processor_arg) is None:
            raise ValueError(f"{k}= goes with raw {name} input ({plugins[name].processor_arg}=)")
    out: dict[str, Any] = {k: v for k, v in inputs.items() if k in model_keys and v is not None}
    raw = {k: v for k, v in inputs.items() if k not in model_keys and v is not None}
    if any(inputs.get(arg) is not None for arg in raw_args):  # the processors built from the model's options
        processor = MMJepaProcessor({name: mod.build_processor(model.config.modality_config(name))
                                     for name, mod in plugins.items()})
        out.update(processor(**raw))
    for name, mod in plugins.items():
        x = out.get(mod.input_key)
        if x is not None and len(x) != batch_size:
            given = mod.processor_arg if inputs.get(mod.processor_arg) is not None else mod.input_key
            raise ValueError(f"batch size mismatch: {batch_size} {span} sequence(s) but {len(x)} {name} "
                             f"input(s) ({given}=); give one per sequence")
    return out


@torch.no_grad()
def span_logits(model: Any, input_ids: torch.Tensor, span_mask: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                **other_inputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Vocabulary logits at the masked positions.

    input_ids (B, L); span_mask (B, L) bool, True on tokens to predict; attention_mask (B, L) marks
    real tokens (default: every token). Other modalities join the context with their full view:
    raw values (``images=``, ``audio=`` ...) or model inputs (``pixel_values=`` ...), see
    :func:`conditioning_inputs`. Returns logits (B, K, V), positions (B, K) and validity (B, K)
    bool (None when every row masks K tokens).
    """
    readout = readout_of(model)
    span = readout.modality
    if input_ids.dim() != 2 or span_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and span_mask must both be (B, L), got {tuple(input_ids.shape)} "
                         f"and {tuple(span_mask.shape)}")
    other_inputs = conditioning_inputs(model, span, input_ids.shape[0], other_inputs)
    dev = next(model.parameters()).device
    input_ids = input_ids.to(dev)
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(dev).bool()
    span_mask = span_mask.to(dev).bool() & real
    n_mask, n_ctx = span_mask.sum(1), (real & ~span_mask).sum(1)
    if (n_mask == 0).any():
        raise ValueError("every sequence needs at least one masked token")
    if (n_ctx == 0).any():
        raise ValueError("every sequence needs at least one unmasked token")
    ctx_idx, ctx_valid = pack_indices([r.nonzero().squeeze(1) for r in (real & ~span_mask).cpu()])
    tgt_idx, tgt_valid = pack_indices([r.nonzero().squeeze(1) for r in span_mask.cpu()])
    ctx_idx, tgt_idx = ctx_idx.to(dev), tgt_idx.to(dev)
    ctx_valid = ctx_valid.to(dev) if ctx_valid is not None else None
    tgt_valid = tgt_valid.to(dev) if tgt_valid is not None else None

    was_training = model.training
    model.eval()
    try:
        context = [(span, *encode_context(model.encoders[span], input_ids, ctx_idx, ctx_valid, real))]
        others = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in other_inputs.items()}
        for name in model.modality_names:  # optional conditioning on the other modalities
            mod = get_modality(name)
            if name == span or others.get(mod.input_key) is None:
                continue
            valid = mod.valid_tokens(others)
            z = model.encoders[name](others[mod.input_key], None, valid)  # (B, N, D)
            idx = torch.arange(z.shape[1], device=dev).expand(z.shape[0], -1)
            context.append((name, z, idx, valid))
        tv = tgt_valid.unsqueeze(1) if tgt_valid is not None else None
        own = context[0][1]  # (B, N, D) with mask tokens in the context: they start the queries
        ql = target_query_latents(own, tgt_idx.unsqueeze(1)) if span in model.config.context_mask_tokens else None
        pred = model.predictor(context, span, tgt_idx.unsqueeze(1), tv, ql)  # (B, K, D)
        logits = readout.logits(pred, readout.output_table(model)).float()  # (B, K, V)
    finally:
        model.train(was_training)
    return logits, tgt_idx, tgt_valid


@torch.no_grad()
def fill_spans(model: Any, input_ids: torch.Tensor, span_mask: torch.Tensor | None = None, top_k: int = 5,
               attention_mask: torch.Tensor | None = None, **other_inputs: Any) -> dict[str, torch.Tensor]:
    """Top-k predictions for every masked token.

    ``span_mask`` (B, L) bool defaults to ``input_ids == mask_token_id`` (the span modality's
    option). Other modalities condition the prediction: ``images=`` (PIL images, arrays, paths),
    ``audio=`` (+ ``sampling_rate=``) ... — each plug-in's processor keyword — or their model
    inputs (``pixel_values=`` ...), one per sequence (:func:`conditioning_inputs`). Returns a dict
    with ``positions`` (B, K), ``valid`` (B, K) bool, ``top_ids`` (B, K, top_k), ``top_probs``
    (B, K, top_k) and ``logits`` (B, K, V).
    """
    _check_top_k(top_k)
    if not isinstance(input_ids, torch.Tensor) or (span_mask is not None and not isinstance(span_mask, torch.Tensor)):
        raise TypeError("input_ids and span_mask must be torch tensors (B, L)")
    if span_mask is None:
        span_mask = input_ids == model.config.modality_config(readout_of(model).modality).mask_token_id
    logits, pos, valid = span_logits(model, input_ids, span_mask, attention_mask, **other_inputs)
    top_k = min(top_k, logits.shape[-1])
    probs, ids = logits.softmax(-1).topk(top_k, dim=-1)
    if valid is None:
        valid = torch.ones(pos.shape, dtype=torch.bool, device=pos.device)
    return {"positions": pos, "valid": valid, "top_ids": ids, "top_probs": probs, "logits": logits}


MAX_BEAMS = 1000  # token sequences kept per span while ranking completions (bounds time and memory)


def _check_top_k(top_k: Any) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int >= 1, got {type(top_k).__name__}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


def _k_best(probs: torch.Tensor, ids: torch.Tensor, k: int) -> list[tuple[list[int], float]]:
    """Best ``k`` token sequences of a span whose positions are predicted independently.

    probs/ids (S, n) per position, best first -> [(ids, prob)] ranked by the product of probs."""
    beams: list[tuple[list[int], float]] = [([], 1.0)]
    for p_row, i_row in zip(probs.tolist(), ids.tolist()):
        beams = sorted(((seq + [i], sp * p) for seq, sp in beams for p, i in zip(p_row, i_row)),
                       key=lambda t: -t[1])[:k]
    return beams


def _completions(probs: torch.Tensor, ids: torch.Tensor, tokenizer: Any, k: int) -> list[tuple[str, float]]:
    """The ``k`` best distinct, non-empty decoded completions of one span. Token sequences that
    decode to the same string are one completion (their probabilities add up); sequences that
    decode to nothing (special tokens, a bare word boundary) are dropped."""
    merged: dict[str, float] = {}
    for seq, p in _k_best(probs, ids, min(max(4 * k, 20), MAX_BEAMS)):
        text = tokenizer.decode(seq, skip_special_tokens=True).strip()
        if text:
            merged[text] = merged.get(text, 0.0) + p
    return sorted(merged.items(), key=lambda t: -t[1])[:k]


def fill_spans_text(model: Any, tokenizer: Any, texts: str | Sequence[str], top_k: int = 5,
                    **other_inputs: Any) -> list[list[list[tuple[str, float]]]]:
    """Fill the ``<mask>`` spans of ``texts``.

    Each mask marker stands for one token; adjacent markers form one span of several tokens.
    ``tokenizer`` must be the one the model was trained with (its vocabulary fingerprint is
    checked). Returns, per text, per span (left to right), up to ``top_k`` distinct, non-empty
    (completion, probability) pairs. Other modalities condition the prediction, one value per text:
    raw (``images=``, ``audio=`` + ``sampling_rate=``) or model inputs (``pixel_values=`` ...).
    """
    readout = readout_of(model)
    cfg = model.config.modality_config(readout.modality)
    processor = get_modality(readout.modality).build_processor(cfg, tokenizer=tokenizer)  # checks the vocabulary
    _check_top_k(top_k)
    if not isinstance(texts, (str, list, tuple)):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no text given")
    marker = tokenizer.mask_token
    if marker is None:
        raise ValueError("the tokenizer has no mask token")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got {type(t).__name__}")
        if marker not in t:
            shown = repr(t) if len(t) <= 60 else repr(t[:60]) + f"... ({len(t)} characters)"
            raise ValueError(f"text {shown} has no {marker} marker")
    enc = processor(texts)
    ids, att = enc["input_ids"], enc["attention_mask"]
    if (ids == tokenizer.mask_token_id).sum(1).lt(torch.tensor([t.count(marker) for t in texts])).any():
        raise ValueError(f"a text is longer than max_length={cfg.max_length} tokens: some {marker} were cut off")
    n = min(max(4 * top_k, 20), cfg.vocab_size)
    out = fill_spans(model, ids, ids == tokenizer.mask_token_id, top_k=n, attention_mask=att, **other_inputs)
    results = []
    for b in range(len(texts)):
        pos = out["positions"][b][out["valid"][b]].tolist()
        probs, tops = out["top_probs"][b], out["top_ids"][b]
        spans, start = [], 0
        for j in range(1, len(pos) + 1):  # group adjacent masked positions into spans
            if j == len(pos) or pos[j] != pos[j - 1] + 1:
                spans.append((start, j))
                start = j
        results.append([_completions(probs[a:e], tops[a:e], tokenizer, top_k) for a, e in spans])
    return results


# ----------------------------------------------------------------------------- evaluation
def chunk_ids(ids: Sequence[int] | torch.Tensor, length: int) -> torch.Tensor:
    """A 1-D token stream -> (n, length) non-overlapping chunks (the remainder is dropped)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    n = len(ids) // length
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one chunk of {length}")
    return ids[: n * length].reshape(n, length)


def span_masks(num: int, length: int, sampler: SpanMasking, seed: int = 0) -> torch.Tensor:
    """(num, length) bool span masks drawn with a fixed seed (the same for every model compared)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([sampler.sample(length, g) for _ in range(num)])


@torch.no_grad()
def masked_token_accuracy(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], chunks: torch.Tensor,
                          masks: torch.Tensor, batch_size: int = 32) -> dict[str, float]:
    """Top-1 / top-5 accuracy of ``predict(input_ids (B, L), span_mask (B, L)) -> logits (n_masked, V)``
    (rows in row-major order of the masked positions) on ``chunks`` with ``masks``."""
    hit1 = hit5 = total = 0
    for i in range(0, len(chunks), batch_size):
        ids, m = chunks[i : i + batch_size], masks[i : i + batch_size]
        logits = predict(ids, m)
        labels = ids[m].to(logits.device)  # (n_masked,)
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (n_masked, 5)
        hit1 += int((top[:, 0] == labels).sum())
        hit5 += int((top == labels[:, None]).any(1).sum())
        total += len(labels)
    return {"top1": hit1 / total, "top5": hit5 / total, "num_masked": total}


def sequence_span_masks(maskable: torch.Tensor, sampler: SpanMasking, draws: int, seed: int = 0) -> torch.Tensor:
    """Fixed span masks of variable-length sequences: ``maskable`` (N, L) bool (the tokens that may
    be hidden, e.g. a caption's real tokens but its special ones) -> (N, draws, L) bool, ``draws``
    masks per sequence laid by ``sampler`` over its maskable tokens, from one generator seeded with
    ``seed`` (the same masks for every model and conditioning compared). Each mask hides at least
    one maskable token and keeps at least one; a sequence with fewer than 2 maskable tokens gets
    empty masks (callers skip it)."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    g = torch.Generator().manual_seed(seed)
    N, L = maskable.shape
    out = torch.zeros(N, draws, L, dtype=torch.bool)
    for i in range(N):
        pos = maskable[i].nonzero().squeeze(1)  # (n,)
        if len(pos) < 2:
            continue
        for r in range(draws):
            out[i, r, pos[sampler.sample(len(pos), g)]] = True
    return out


@torch.no_grad()
def conditioned_hits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, masks: torch.Tensor,
                     conditions: dict[str, dict[str, Any]], batch_size: int = 256,
                     exclude: Sequence[int] = ()) -> dict[str, torch.Tensor]:
    """Masked-token hits per sequence under several conditionings, on the same masks.

    ``input_ids``, ``attention_mask`` (N, L); ``masks`` (N, R, L) bool (:func:`sequence_span_masks`;
    an all-False row is skipped); ``conditions``: name -> the other modalities' inputs for the N
    sequences, as :func:`fill_spans` takes them (``{}``: the sequence alone). Raw values are
    processed once. ``exclude``: token ids never predicted (e.g. the special tokens, which
    :func:`fill_spans_text` drops too, when only ordinary tokens are masked). Returns name -> (N, 3)
    long: top-1 hits, top-5 hits and masked tokens per sequence, summed over its R masks."""
    span = readout_of(model).modality
    N, R, L = masks.shape
    rows = masks.reshape(N * R, L).any(1).nonzero().squeeze(1)  # (n_rows,) flat (sequence, draw) rows
    seq = rows // R  # (n_rows,) the sequence of each row
    out = {}
    for name, given in conditions.items():
        inputs = conditioning_inputs(model, span, N, given)  # model inputs, N rows each
        hits = torch.zeros(N, 3, dtype=torch.long)
        for a in range(0, len(rows), batch_size):
            r, s = rows[a : a + batch_size], seq[a : a + batch_size]
            ids, att, m = input_ids[s], attention_mask[s], masks.reshape(N * R, L)[r]  # (b, L) each
            cond = {k: v[s.to(v.device)] if torch.is_tensor(v) else [v[i] for i in s.tolist()]
                    for k, v in inputs.items()}
            logits, pos, valid = span_logits(model, ids, m, att, **cond)  # (b, K, V), (b, K), (b, K) or None
            if len(exclude):
                logits[..., list(exclude)] = float("-inf")
            labels = ids.to(pos.device).gather(1, pos)  # (b, K)
            ok = torch.ones_like(labels, dtype=torch.bool) if valid is None else valid
            top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (b, K, 5)
            hit1 = ((top[..., 0] == labels) & ok).sum(1)  # (b,)
            hit5 = ((top == labels[..., None]).any(-1) & ok).sum(1)  # (b,)
            hits.index_add_(0, s, torch.stack([hit1, hit5, ok.sum(1)], 1).cpu())
        out[name] = hits
    return out


def paired_bootstrap(hits_a: torch.Tensor, hits_b: torch.Tensor, counts: torch.Tensor, num: int = 2000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``sum(hits_a) / sum(counts) - sum(hits_b) / sum(counts)``,
    resampling the sequences (the rows of the (N,) tensors) with replacement: paired, since both
    accuracies are measured on the same sequences and masks."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(counts), (num, len(counts)), generator=g)  # (num, N)
    n = counts[idx].sum(1).double().clamp_min(1)  # (num,)
    diff = (hits_a[idx].sum(1) - hits_b[idx].sum(1)).double() / n  # (num,)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = diff.quantile(q).tolist()
    return lo, hi


def mmjepa_predictor(model: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``predict`` function of :func:`masked_token_accuracy` for an mmjepa model."""

    def predict(ids: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        logits, _, valid = span_logits(model, ids, m)
        return logits.reshape(-1, logits.shape[-1]) if valid is None else logits[valid]

    return predict


def run_spans(args: Any) -> int:
    """``mmjepa eval spans``: masked-token top-1 / top-5 accuracy of a saved model on a text file
    (parsed arguments: model, text, tokenizer, mask_ratio, max_chunks, batch_size, seed, json)."""
    model = MMJepaModel.from_pretrained(args.model).eval()
    readout = readout_of(model)
    cfg = model.config.modality_config(readout.modality)
    ref = args.tokenizer or (args.model if (Path(args.model) / "tokenizer_config.json").exists() else cfg.tokenizer)
    if not ref:
        raise ValueError("no tokenizer in the model folder and none recorded in its config; pass --tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(ref)
    get_modality(readout.modality).build_processor(cfg, tokenizer=tokenizer)  # refuses a tokenizer of another vocabulary
    ids = tokenizer(Path(args.text).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    chunks = chunk_ids(ids, cfg.max_length)
    if args.max_chunks:
        chunks = chunks[: args.max_chunks]
    sampler = SpanMasking(cfg.max_length, args.mask_ratio or cfg.mask_ratio, cfg.mean_span, cfg.max_span)
    masks = span_masks(len(chunks), cfg.max_length, sampler, args.seed)
    result = masked_token_accuracy(mmjepa_predictor(model), chunks, masks, args.batch_size)
    result.update(model=args.model, text=args.text, tokenizer=str(ref), chunks=len(chunks),
                  mask_ratio=sampler.mask_ratio)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
