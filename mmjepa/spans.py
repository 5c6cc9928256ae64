"""Masked-span prediction: fill masked text spans with the context encoder, the predictor and the
text readout head, and measure masked-token top-1 / top-5 accuracy.

- :func:`fill_spans` (also ``model.fill_spans``): token ids + a span mask -> top-k ids/probs per
  masked position, optionally conditioned on other modalities' inputs (image, audio);
- :func:`fill_spans_text`: strings with ``<mask>`` markers -> decoded top-k completions per span
  (one marker = one token; adjacent markers form one multi-token span);
- :func:`masked_token_accuracy`: top-1/top-5 of any predictor of masked tokens on a fixed set of
  masked chunks (used for mmjepa, BERT and the unigram baseline alike);
- ``mmjepa eval spans --model DIR --text FILE``: :func:`main_spans`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

import torch

from .modalities import get_modality
from .modalities.text import SpanMasking, pack_indices


def _check_text_model(model: Any) -> None:
    if "text" not in getattr(model, "modality_names", []):
        raise ValueError("this model has no text modality")
    if model.text_readout is None:
        raise ValueError("this model has no text readout head (text option readout=False); it cannot fill spans")


@torch.no_grad()
def span_logits(model: Any, input_ids: torch.Tensor, span_mask: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                **other_inputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Vocabulary logits at the masked positions.

    input_ids (B, L); span_mask (B, L) bool, True on tokens to predict; attention_mask (B, L) marks
    real tokens (default: every token). Other modalities' model inputs (``pixel_values=``,
    ``input_features=`` ...) join the context. Returns logits (B, K, V), positions (B, K) and
    validity (B, K) bool (None when every row masks K tokens).
    """
    _check_text_model(model)
    if input_ids.dim() != 2 or span_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and span_mask must both be (B, L), got {tuple(input_ids.shape)} "
                         f"and {tuple(span_mask.shape)}")
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
        context = [("text", model.encoders["text"](input_ids, ctx_idx, ctx_valid), ctx_idx, ctx_valid)]
        for name in model.modality_names:  # optional conditioning on the other modalities
            key = get_modality(name).input_key
            if name == "text" or other_inputs.get(key) is None:
                continue
            x = other_inputs[key].to(dev)
            valid = get_modality(name).valid_tokens({k: (v.to(dev) if torch.is_tensor(v) else v)
                                                     for k, v in other_inputs.items()}, model.encoders[name].embed)
            z = model.encoders[name](x, None, valid)  # (B, N, D)
            idx = torch.arange(z.shape[1], device=dev).expand(z.shape[0], -1)
            context.append((name, z, idx, valid))
        tv = tgt_valid.unsqueeze(1) if tgt_valid is not None else None
        pred = model.predictor(context, "text", tgt_idx.unsqueeze(1), tv)  # (B, K, D)
        logits = model.text_readout(pred).float()  # (B, K, V)
    finally:
        model.train(was_training)
    return logits, tgt_idx, tgt_valid


@torch.no_grad()
def fill_spans(model: Any, input_ids: torch.Tensor, span_mask: torch.Tensor | None = None, top_k: int = 5,
               attention_mask: torch.Tensor | None = None, **other_inputs: Any) -> dict[str, torch.Tensor]:
    """Top-k predictions for every masked token.

    ``span_mask`` (B, L) bool defaults to ``input_ids == mask_token_id``. Returns a dict with
    ``positions`` (B, K), ``valid`` (B, K) bool, ``top_ids`` (B, K, top_k), ``top_probs``
    (B, K, top_k) and ``logits`` (B, K, V).
    """
    _check_text_model(model)
    if span_mask is None:
        span_mask = input_ids == model.text_readout.cfg.mask_token_id
    logits, pos, valid = span_logits(model, input_ids, span_mask, attention_mask, **other_inputs)
    top_k = min(top_k, logits.shape[-1])
    probs, ids = logits.softmax(-1).topk(top_k, dim=-1)
    if valid is None:
        valid = torch.ones(pos.shape, dtype=torch.bool, device=pos.device)
    return {"positions": pos, "valid": valid, "top_ids": ids, "top_probs": probs, "logits": logits}


def _k_best(probs: torch.Tensor, ids: torch.Tensor, k: int) -> list[tuple[list[int], float]]:
    """Best ``k`` token sequences of a span whose positions are predicted independently.

    probs/ids (S, k) per position, best first -> [(ids, prob)] ranked by the product of probs."""
    beams: list[tuple[list[int], float]] = [([], 1.0)]
    for p_row, i_row in zip(probs.tolist(), ids.tolist()):
        beams = sorted(((seq + [i], sp * p) for seq, sp in beams for p, i in zip(p_row, i_row)),
                       key=lambda t: -t[1])[:k]
    return beams


def fill_spans_text(model: Any, tokenizer: Any, texts: str | Sequence[str], top_k: int = 5,
                    max_length: int | None = None) -> list[list[list[tuple[str, float]]]]:
    """Fill the ``<mask>`` spans of ``texts``.

    Each mask marker stands for one token; adjacent markers form one span of several tokens.
    Returns, per text, per span (left to right), the ``top_k`` (decoded completion, probability).
    """
    _check_text_model(model)
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    marker = tokenizer.mask_token
    if marker is None:
        raise ValueError("the tokenizer has no mask token")
    for t in texts:
        if marker not in t:
            raise ValueError(f"text {t!r} has no {marker} marker")
    max_length = max_length or model.text_readout.cfg.max_length
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
    ids, att = enc["input_ids"], enc["attention_mask"]
    if (ids == tokenizer.mask_token_id).sum(1).lt((torch.tensor([t.count(marker) for t in texts]))).any():
        raise ValueError(f"a text is longer than max_length={max_length} tokens: some {marker} were cut off")
    out = fill_spans(model, ids, ids == tokenizer.mask_token_id, top_k=top_k, attention_mask=att)
    results = []
    for b in range(len(texts)):
        pos = out["positions"][b][out["valid"][b]].tolist()
        probs, tops = out["top_probs"][b], out["top_ids"][b]
        spans, start = [], 0
        for j in range(1, len(pos) + 1):  # group adjacent masked positions into spans
            if j == len(pos) or pos[j] != pos[j - 1] + 1:
                spans.append((start, j))
                start = j
        results.append([
            [(tokenizer.decode(seq).strip(), p) for seq, p in _k_best(probs[a:e], tops[a:e], top_k)]
            for a, e in spans
        ])
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


def mmjepa_predictor(model: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``predict`` function of :func:`masked_token_accuracy` for an mmjepa model."""

    def predict(ids: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        logits, _, valid = span_logits(model, ids, m)
        return logits.reshape(-1, logits.shape[-1]) if valid is None else logits[valid]

    return predict


def main_spans(argv: list[str] | None = None) -> int:
    """``mmjepa eval spans --model DIR --text FILE``: masked-token top-1 / top-5 accuracy."""
    parser = argparse.ArgumentParser(prog="mmjepa eval spans", description="masked-span prediction accuracy")
    parser.add_argument("--model", required=True, help="a folder saved with save_pretrained (or a Hub id)")
    parser.add_argument("--text", required=True, help="plain-text file to evaluate on")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder (default: the model folder, else the text option `tokenizer`)")
    parser.add_argument("--mask-ratio", type=float, default=None, help="default: the model's text mask_ratio")
    parser.add_argument("--max-chunks", type=int, default=None, help="evaluate on at most this many chunks")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from .model import MMJepaModel

    model = MMJepaModel.from_pretrained(args.model).eval()
    cfg = model.config.modality_config("text") if "text" in model.config.modalities else None
    if cfg is None:
        print("mmjepa eval spans: the model has no text modality", file=sys.stderr)
        return 2
    tok_src = args.tokenizer
    if tok_src is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.model)
        except (OSError, ValueError):
            if not cfg.tokenizer:
                print("mmjepa eval spans: no tokenizer in the model folder; pass --tokenizer", file=sys.stderr)
                return 2
            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tok_src)
    with open(args.text, encoding="utf-8") as f:
        ids = tokenizer(f.read(), add_special_tokens=False)["input_ids"]
    chunks = chunk_ids(ids, cfg.max_length)
    if args.max_chunks:
        chunks = chunks[: args.max_chunks]
    sampler = SpanMasking(cfg.max_length, args.mask_ratio or cfg.mask_ratio, cfg.mean_span, cfg.max_span)
    masks = span_masks(len(chunks), cfg.max_length, sampler, args.seed)
    result = masked_token_accuracy(mmjepa_predictor(model), chunks, masks, args.batch_size)
    result.update(model=args.model, text=args.text, chunks=len(chunks), mask_ratio=sampler.mask_ratio)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
