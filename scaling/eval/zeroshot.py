"""Zero-shot classification (prompt-template ensembles) and image<->text retrieval for CLIPs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from open_clip import build_zero_shot_classifier
from torch import nn

from scaling.data.transforms import normalize_on_device
from scaling.stages import RETRIEVAL_KS


@torch.no_grad()
def text_classifier(model: nn.Module, classnames: Sequence[str], templates: Sequence[str | Callable],
                    tokenizer: Callable, device: torch.device, batch_classes: int = 64) -> torch.Tensor:
    """``[D, C]`` class embeddings: each class's prompts embedded, normalised, averaged, renormalised
    (open_clip's ``build_zero_shot_classifier``)."""
    return build_zero_shot_classifier(model, tokenizer=tokenizer, classnames=list(classnames),
                                      templates=templates, num_classes_per_batch=batch_classes,
                                      device=device, use_tqdm=False)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hits = top.eq(labels.view(-1, 1))
    return {k: int(hits[:, : min(k, k_max)].any(dim=1).sum()) for k in ks}


def logit_scale(model: nn.Module) -> float | None:
    """The model's own inverse temperature (training keeps its log in [0, ln 100]), or None for a
    model without one."""
    scale = getattr(model, "logit_scale", None)
    if not isinstance(scale, torch.Tensor):
        return None
    return float(scale.detach().float().exp())


@torch.no_grad()
def classification(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   classifier: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Top-1/top-5 accuracy of ``argmax(image_emb @ classifier)`` over ``(images, labels)`` batches,
    and ``loss``: the cross-entropy of the true class at the model's own logit scale (a held-out
    loss that keeps falling while top-1 sits on a plateau; absent for a model without a scale)."""
    correct = {1: 0, 5: 0}
    total, nll = 0, 0.0
    scale = logit_scale(model)
    for images, labels in batches:
        feats = F.normalize(model.encode_image(normalize_on_device(images, device)).float(), dim=-1)
        logits, labels = feats @ classifier.float(), labels.to(device)
        hits = topk_correct(logits, labels)
        for k in correct:
            correct[k] += hits[k]
        if scale is not None:
            nll += float(F.cross_entropy(scale * logits, labels, reduction="sum"))
        total += len(labels)
    if total == 0:
        raise ValueError("classification set is empty")
    out = {"top1": correct[1] / total, "top5": correct[5] / total}
    return out | ({"loss": nll / total} if scale is not None else {})


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries (rows) with a positive among their ``k`` best-scored candidates.
    ``positives``: bool ``[queries, candidates]``."""
    order = scores.argsort(dim=1, descending=True)
    hit_rank = positives.gather(1, order).float().argmax(dim=1)  # rank of the first positive
    return {k: float((hit_rank < k).float().mean()) for k in ks}


@torch.no_grad()
def retrieval(model: nn.Module, image_batches: Iterable[torch.Tensor], captions: Sequence[Sequence[str]],
              tokenizer: Callable, device: torch.device, ks: Sequence[int] = RETRIEVAL_KS,
              text_batch: int = 256) -> dict[str, float]:
    """``image_r<k>``: text query -> image (the caption's own image among the k best);
    ``text_r<k>``: image query -> any of its captions among the k best texts.
    (No ``@`` in the names: MLflow rejects it in metric keys.)"""
    image_feats = torch.cat([F.normalize(model.encode_image(normalize_on_device(b, device)).float(), dim=-1)
                             for b in image_batches])
    texts = [t for caps in captions for t in caps]
    owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps], device=device)
    if len(captions) != len(image_feats):
        raise ValueError(f"retrieval set has {len(image_feats)} images but {len(captions)} caption lists")
    text_feats = torch.cat([
        F.normalize(model.encode_text(tokenizer(texts[i : i + text_batch]).to(device)).float(), dim=-1)
        for i in range(0, len(texts), text_batch)])
    scores = text_feats @ image_feats.T  # [texts, images]
    positives = owner.view(-1, 1) == torch.arange(len(image_feats), device=device).view(1, -1)
    image_r = recall_at_k(scores, positives, ks)
    text_r = recall_at_k(scores.T, positives.T, ks)
    out = {**{f"image_r{k}": v for k, v in image_r.items()}, **{f"text_r{k}": v for k, v in text_r.items()}}
    scale = logit_scale(model)
    if scale is not None:
        out["loss"] = contrastive_loss(scale * scores, positives)
    return out


def contrastive_loss(logits: torch.Tensor, positives: torch.Tensor) -> float:
    """CLIP's symmetric InfoNCE over a whole held-out set, ``logits`` ``[texts, images]``: each
    text against every image (its own is the target), each image against every text (its captions
    are the targets: the log of their summed probability). Over all N images rather than a
    training batch, so its value is comparable between runs evaluated on the same set."""
    t2i = -(logits.log_softmax(dim=1)[positives]).mean()
    i2t_log = logits.T.log_softmax(dim=1).masked_fill(~positives.T, float("-inf"))
    i2t = -torch.logsumexp(i2t_log, dim=1).mean()
    return float((t2i + i2t) / 2)
