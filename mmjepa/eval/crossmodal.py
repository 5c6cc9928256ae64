"""Cross-modal evaluation of a model on a set of items: retrieval both ways, zero-shot classification.

Design decisions:
- items come from any reader of :mod:`mmjepa.retrieval.items` (a folder, shards, a manifest, a
  built-in data set) and are embedded once for every modality they hold;
- positives: ``item`` (paired data: an item's other modalities are its positives), ``class``
  (labelled data: every item of the query's class) or ``auto`` (class when every item is
  labelled, else item); recall@K with CLIP_benchmark semantics (:mod:`mmjepa.eval.retrieval`);
- both scoring modes: embedding similarity, and the target modality's embedding predicted from the
  query (``predicted``, when the model has a ``pooled`` objective);
- zero-shot: each class is the mean of its text prompts' embeddings (one per template, CLIP's
  prompt ensembling), re-normalised; an item is given the class of the best-scored prompt mean.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..models import MMJepaModel
from ..objectives import PooledPrediction
from ..retrieval.items import embed_items, string_items, string_modality
from .retrieval import class_positives, recall_at_k

POSITIVES = ("auto", "item", "class")


def can_predict(model: MMJepaModel) -> bool:
    """Whether ``model`` can predict one modality's embedding from another (a ``pooled`` objective)."""
    return any(isinstance(o, PooledPrediction) for o in model.objectives.values())


def _positives(kind: str, qkeys: list[str], gkeys: list[str], qlab: list, glab: list) -> torch.Tensor:
    if kind == "class":
        return class_positives(torch.tensor(qlab), torch.tensor(glab))
    where = {k: i for i, k in enumerate(gkeys)}
    pos = torch.zeros(len(qkeys), len(gkeys), dtype=torch.bool)
    for i, k in enumerate(qkeys):
        if k in where:
            pos[i, where[k]] = True
    return pos


def evaluate_retrieval(model: MMJepaModel, items: Iterable[dict[str, Any]], modalities: Sequence[str] | None = None,
                       positives: str = "auto", ks: Sequence[int] = (1, 5, 10), batch_size: int = 64,
                       predicted: bool = True, progress: bool = True) -> dict[str, Any]:
    """Recall@K, mean and median rank for every ordered pair of ``modalities`` (default: the
    model's) held by the items: ``{"audio_to_image": {"r1": ..., "mean_rank": ..., "queries": n,
    "gallery": n}, "audio_to_image_predicted": {...}, ...}``. A query without any positive in
    the gallery (an item that lacks the other modality) is left out, and counted in ``queries``'s
    complement ``no_positive``."""
    if positives not in POSITIVES:
        raise ValueError(f"positives must be one of {POSITIVES}, got {positives!r}")
    predicted = predicted and can_predict(model)
    done = embed_items(model, items, modalities, batch_size, progress=progress, predict=predicted)
    names = [m for m, e in done.embeddings.items() if len(e)]
    if len(names) < 2:
        raise ValueError(f"the items hold {names or 'no modality'} of the model's: retrieval needs two")
    labelled = all(lab is not None for m in names for lab in done.labels[m])
    if positives == "auto":
        positives = "class" if labelled else "item"
    if positives == "class" and not labelled:
        raise ValueError("positives='class' needs a label (label / cls field) on every item")
    out: dict[str, Any] = {"positives": positives, "items": done.items, "skipped": done.skipped,
                           "counts": {m: len(done.keys[m]) for m in names}}
    for q in names:
        for g in names:
            if q == g:
                continue
            pos = _positives(positives, done.keys[q], done.keys[g], done.labels[q], done.labels[g])
            keep = pos.any(1)
            if not keep.any():
                continue
            scorers = {"": done.embeddings[q]}
            if (q, g) in done.predicted:
                scorers["_predicted"] = done.predicted[(q, g)]
            for suffix, queries in scorers.items():
                res = recall_at_k((queries @ done.embeddings[g].T)[keep], pos[keep], ks)
                out[f"{q}_to_{g}{suffix}"] = {**res, "queries": int(keep.sum()), "no_positive": int((~keep).sum()),
                                              "gallery": len(done.keys[g])}
    return out


@torch.no_grad()
def class_text_embeddings(model: MMJepaModel, class_names: Sequence[str], templates: Sequence[str],
                          batch_size: int = 64) -> torch.Tensor:
    """(C, D): per class the normalised mean of its prompts' text embeddings (``template.format(name)``)."""
    if not class_names:
        raise ValueError("give at least one class name")
    templates = list(templates) or ["{}"]
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"a template must hold '{{}}' where the class name goes: {bad}")
    prompts = [t.format(c) for c in class_names for t in templates]
    lang = string_modality(model)
    done = embed_items(model, string_items(prompts, lang), [lang], batch_size, progress=False)
    if len(done.keys[lang]) != len(prompts):
        raise ValueError("some prompts could not be processed")
    emb = done.embeddings[lang].reshape(len(class_names), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


def zeroshot_classify(model: MMJepaModel, items: Iterable[dict[str, Any]], modality: str,
                      class_names: Sequence[str], templates: Sequence[str] = ("{}",), batch_size: int = 64,
                      predicted: bool = True, progress: bool = True) -> dict[str, Any]:
    """Zero-shot accuracy of ``modality``'s items (labelled by class index into ``class_names``)
    against text prompts: ``{"accuracy": ..., "accuracy_predicted": ..., "items": n, ...}``."""
    lang = string_modality(model)
    if modality == lang or modality not in model.modality_names:
        raise ValueError(f"zero-shot classification needs a model with {lang} and {modality!r} "
                         f"(it has {model.modality_names}), for a modality other than {lang}")
    classes = class_text_embeddings(model, class_names, templates, batch_size)  # (C, D)
    predicted = predicted and can_predict(model)
    done = embed_items(model, items, [modality], batch_size, progress=progress, predict=[lang] if predicted else False)
    labels = done.labels[modality]
    if not labels or any(lab is None for lab in labels):
        raise ValueError(f"every {modality} item needs a label (label / cls field) to score zero-shot accuracy")
    y = torch.tensor(labels)
    if int(y.max()) >= len(class_names) or int(y.min()) < 0:
        raise ValueError(f"labels span [{int(y.min())}, {int(y.max())}] but there are {len(class_names)} class names")
    out = {"modality": modality, "items": len(y), "skipped": done.skipped, "classes": len(class_names),
           "templates": len(templates), "chance": float(torch.bincount(y).max()) / len(y),
           "accuracy": float(((done.embeddings[modality] @ classes.T).argmax(1) == y).float().mean())}
    if predicted:
        pred = done.predicted[(modality, lang)]
        out["accuracy_predicted"] = float(((pred @ classes.T).argmax(1) == y).float().mean())
    return out
