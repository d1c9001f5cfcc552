"""Zero-shot metrics on hand-made embeddings, and the eval set layouts."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scaling.eval import sets
from scaling.eval.zeroshot import (
    classification,
    contrastive_loss,
    recall_at_k,
    retrieval,
    text_classifier,
    topk_correct,
)


class ColourClip(torch.nn.Module):
    """Images embed as their mean RGB; a text embeds as the colour it names (red/green/blue)."""

    words = ("red", "green", "blue")

    def encode_image(self, images, normalize=True):
        x = images.mean(dim=(2, 3))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens, normalize=True):
        x = F.one_hot(tokens[:, 0], 3).float()
        return F.normalize(x, dim=-1) if normalize else x


def colour_tokenizer(texts):
    return torch.tensor([[next(i for i, w in enumerate(ColourClip.words) if w in t)] for t in texts])


def colour_images(labels):
    return torch.stack([F.one_hot(torch.tensor(int(c)), 3).float().view(3, 1, 1).expand(3, 4, 4) for c in labels])


def test_topk_and_recall_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3]])
    assert topk_correct(logits, torch.tensor([1, 2]), ks=(1, 2)) == {1: 1, 2: 2}
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.7], [0.1, 0.5, 0.4]])
    positives = torch.eye(3, dtype=torch.bool)
    assert recall_at_k(scores, positives, (1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3),
                                                        3: pytest.approx(1.0)}


def test_zero_shot_classification_of_a_perfect_model():
    model = ColourClip()
    classifier = text_classifier(model, ["red", "green", "blue"], ["a {} thing.", "{}"], colour_tokenizer, "cpu")
    assert classifier.shape == (3, 3)
    labels = torch.tensor([0, 1, 2, 2, 1])
    out = classification(model, [(colour_images(labels), labels)], classifier, torch.device("cpu"))
    assert out == {"top1": 1.0, "top5": 1.0}
    wrong = classification(model, [(colour_images(labels), (labels + 1) % 3)], classifier, torch.device("cpu"))
    assert wrong["top1"] == 0.0


def test_retrieval_counts_any_caption_of_the_image():
    model = ColourClip()
    images = colour_images([0, 1, 2])
    captions = [["a red one", "red"], ["green"], ["blue", "a blue one"]]
    out = retrieval(model, [images], captions, colour_tokenizer, torch.device("cpu"), ks=(1, 5))
    assert out["image_r1"] == 1.0 and out["text_r1"] == 1.0
    shuffled = [["green"], ["blue"], ["red"]]
    out = retrieval(model, [images], shuffled, colour_tokenizer, torch.device("cpu"), ks=(1,))
    assert out["image_r1"] == 0.0 and out["text_r1"] == 0.0


class ScaledColourClip(ColourClip):
    """ColourClip with CLIP's learnable temperature (log-inverse), as EvaClip holds it."""

    def __init__(self, scale: float):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(scale))))


def test_held_out_losses_at_the_models_own_scale():
    labels = torch.tensor([0, 1, 2, 2, 1])
    images = colour_images(labels)
    losses = {}
    for scale in (1.0, 4.0):
        model = ScaledColourClip(scale)
        classifier = text_classifier(model, ["red", "green", "blue"], ["{}"], colour_tokenizer, "cpu")
        out = classification(model, [(images, labels)], classifier, torch.device("cpu"))
        # the true class has cosine 1 and the others 0: -log(e^s / (e^s + 2))
        assert out["loss"] == pytest.approx(float(np.log1p(2 * np.exp(-scale))), rel=1e-4)
        losses[scale] = out["loss"]
    assert losses[4.0] < losses[1.0]  # a sharper model of the same ranking is more certain
    # a model without a temperature (a bare tower) reports accuracies only
    assert "loss" not in classification(ColourClip(), [(images, labels)], classifier, torch.device("cpu"))


def test_held_out_contrastive_loss_is_open_clips_with_one_caption_each():
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 4, generator=g), dim=-1), F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    scale = 7.0
    expected = float(ClipLoss()(img, txt, torch.tensor(scale)))
    assert contrastive_loss(scale * txt @ img.T, torch.eye(6, dtype=torch.bool)) == pytest.approx(expected, rel=1e-5)


def test_retrieval_loss_counts_every_caption_of_an_image_as_its_target():
    model = ScaledColourClip(5.0)
    images = colour_images([0, 1, 2])
    captions = [["a red one", "red"], ["green"], ["blue", "a blue one"]]
    out = retrieval(model, [images], captions, colour_tokenizer, torch.device("cpu"), ks=(1,))
    # own pairs at cosine 1, all others at 0, scale 5. Text -> image: 1 of 3 images, for all 5 texts.
    t2i = np.log1p(2 * np.exp(-5))
    # image -> text among 5 texts: red and blue own 2 captions each (probabilities add), green 1
    two, one = -np.log(2 * np.exp(5) / (2 * np.exp(5) + 3)), -np.log(np.exp(5) / (np.exp(5) + 4))
    assert out["loss"] == pytest.approx((t2i + (2 * two + one) / 3) / 2, rel=1e-5)
    wrong = retrieval(model, [images], [["green"], ["blue"], ["red"]], colour_tokenizer, torch.device("cpu"), ks=(1,))
    assert wrong["loss"] > out["loss"]


def png(colour):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_and_jsonl_layouts(tmp_path):
    root = tmp_path / "cls"
    for name, colour in (("red_ball", (255, 0, 0)), ("blue_box", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"{i}.png").write_bytes(png(colour))
    data = sets.load_classification(root, image_size=8)
    assert data.images.shape == (6, 3, 8, 8) and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.classnames == ["blue box", "red ball"]  # sorted folder names, '_' as spaces
    assert len(data.templates) > 1 and all("{}" in t for t in data.templates)  # open_clip's defaults
    (root / "classnames.txt").write_text("blue square\nred circle\n")
    (root / "templates.txt").write_text("a {}.\n")
    data = sets.load_classification(root, image_size=8, max_samples=2)
    assert data.classnames == ["blue square", "red circle"] and data.templates == ["a {}."]
    assert sorted(data.labels.tolist()) == [0, 1]  # evenly spaced subsample keeps both classes

    ret = tmp_path / "ret"
    (ret / "images").mkdir(parents=True)
    (ret / "images" / "0.png").write_bytes(png((1, 2, 3)))
    (ret / "captions.jsonl").write_text(json.dumps({"image": "images/0.png", "captions": ["a", "b"]}) + "\n")
    r = sets.load_retrieval(ret, image_size=8)
    assert r.images.shape == (1, 3, 8, 8) and r.captions == [["a", "b"]]


def test_clip_benchmark_webdataset_layout(tmp_path):
    (tmp_path / "test").mkdir()
    with tarfile.open(tmp_path / "test" / "0.tar", "w") as tar:
        for i, label in enumerate([1, 0]):
            for ext, payload in (("webp", png((9, 9, 9))), ("cls", str(label).encode()), ("txt", b"x\ny")):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (tmp_path / "classnames.txt").write_text("cat\ndog\n")
    data = sets.load_classification(tmp_path, image_size=8)
    assert data.labels.tolist() == [1, 0] and data.classnames == ["cat", "dog"]
    assert sets.load_retrieval(tmp_path, image_size=8).captions == [["x", "y"], ["x", "y"]]


def test_missing_or_empty_sets_are_named(tmp_path):
    with pytest.raises(sets.EvalSetError, match="nope is not a directory"):
        sets.load_classification(tmp_path / "nope", 8)
    with pytest.raises(sets.EvalSetError, match="no image-caption pair"):
        sets.load_retrieval(tmp_path, 8)


def test_clip_benchmark_folders_count_shards_name_sets_and_check_their_kind(tmp_path):
    from scaling.stages import eval_set_name
    from tests.unit import clip_benchmark_fixtures as fx

    cls, ret = fx.classification_set(tmp_path), fx.retrieval_set(tmp_path)
    data = sets.load_classification(cls, image_size=16)
    assert len(data.labels) == 18 and data.templates[0] == "a photo of a {}."
    assert eval_set_name(str(cls), False, "classification") == "tiny-shapes"  # CLIP_benchmark's name
    with pytest.raises(sets.EvalSetError, match="retrieval set .*give it as eval.retrieval"):
        sets.load_classification(ret, image_size=16)
    (cls / "test" / "nshards.txt").write_text("3\n")  # counts a shard that is not there
    with pytest.raises(sets.EvalSetError, match="counts 3 shard"):
        sets.load_classification(cls, image_size=16)
    (cls / "test" / "nshards.txt").write_text("1\n")  # only 0.tar: what clip_benchmark reads too
    assert len(sets.load_classification(cls, image_size=16).labels) == 9
