"""Checkpoint interop: open_clip EVA CLIPs, timm Eva towers, BAAI key layout, mismatch errors."""

from __future__ import annotations

from unittest import mock

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

from scaling.models import interop  # noqa: E402
from scaling.models.build import build_clip, build_mim, build_vision  # noqa: E402
from scaling.models.registry import get_rung  # noqa: E402


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_open_clip_eva02_b16_round_trip_gives_identical_embeddings():
    torch.manual_seed(0)
    reference = open_clip.create_model(
        "EVA02-B-16", pretrained=None
    ).eval()  # random init, own config
    tokenizer = open_clip.get_tokenizer("EVA02-B-16")
    ours = build_clip(get_rung("B16"), device="meta")  # no init cost: the load materialises it
    interop.load_clip_state_dict(ours, reference.state_dict())
    ours.eval()
    images = torch.randn(1, 3, 224, 224)  # one image: a 224 px B/16 forward is slow on a busy CPU
    tokens = tokenizer(["a photo of a dog", "a red square on a blue background"])
    with torch.no_grad():
        img_diff = (
            (reference.encode_image(images, normalize=True) - ours.encode_image(images)).abs().max()
        )
        txt_diff = (
            (reference.encode_text(tokens, normalize=True) - ours.encode_text(tokens)).abs().max()
        )
        assert img_diff <= 1e-5 and txt_diff <= 1e-5
        # and back: our state dict loads strictly into open_clip
        with mock.patch("timm.models.eva.trunc_normal_", lambda t, *a, **k: t):
            back = open_clip.create_model("EVA02-B-16", pretrained=None, device="meta")
        back.load_state_dict(interop.clip_state_dict(ours), strict=True, assign=True)
        for key, value in reference.state_dict().items():
            assert torch.equal(back.state_dict()[key], value), key


def test_timm_eva_round_trip():
    torch.manual_seed(0)
    reference = timm.create_model(
        "eva02_tiny_patch14_224", pretrained=False, num_classes=0, global_pool="token"
    ).eval()
    tower = build_mim(get_rung("EVA02-Ti"), 64, device="meta").encoder
    interop.load_vision_state_dict(tower, reference.state_dict())
    tower.eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(
            tower.forward_tokens(images), reference.forward_features(images), atol=1e-5
        )
    exported = interop.timm_state_dict(tower)
    with torch.device("meta"), mock.patch("timm.models.eva.trunc_normal_", lambda t, *a, **k: t):
        again = timm.create_model(
            "eva02_tiny_patch14_224", pretrained=False, num_classes=0, global_pool="token"
        )
    again.load_state_dict(exported, strict=True, assign=True)


def _to_baai(state_dict):
    """Rename timm keys the way BAAI's EVA-CLIP checkpoints spell them."""
    renames = [
        ("mlp.fc1_g", "mlp.w1"), ("mlp.fc1_x", "mlp.w2"), ("mlp.fc2", "mlp.w3"), ("mlp.norm", "mlp.ffn_ln"),
        ("attn.norm", "attn.inner_attn_ln"), ("q_proj.bias", "q_bias"), ("v_proj.bias", "v_bias"),
    ]  # fmt: skip
    out = {}
    for key, value in state_dict.items():
        if key.startswith("visual.trunk."):
            key = "visual." + key[len("visual.trunk.") :]
            for old, new in renames:
                key = key.replace(old, new)
        out[key] = value
    return out


def test_baai_eva_clip_layout_loads_through_timm_filter():
    torch.manual_seed(0)
    rung = get_rung("B16", proxy=True)  # sub-LN, SwiGLU, separate q/k/v: every BAAI rename
    source = build_clip(rung).eval()
    baai = _to_baai(source.state_dict())
    assert "visual.blocks.0.mlp.w1.weight" in baai and interop.detect_format(baai) == "baai_clip"
    target = build_clip(rung).eval()
    interop.load_clip_state_dict(target, {"module": baai})
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 32))
    with torch.no_grad():
        assert torch.equal(source.encode_image(images), target.encode_image(images))
        assert torch.equal(source.encode_text(tokens), target.encode_text(tokens))


def test_mismatched_checkpoint_names_first_key_and_both_shapes():
    small = build_clip(get_rung("B16", proxy=True))
    large = build_clip(get_rung("18B", proxy=True))
    with pytest.raises(interop.CheckpointMismatchError) as info:
        interop.load_clip_state_dict(large, small.state_dict())
    message = str(info.value)
    assert "'visual.trunk.cls_token'" in message
    assert "(1, 1, 64)" in message and "(1, 1, 128)" in message
    tower = build_vision(get_rung("B16", proxy=True).vision)
    state = interop.timm_state_dict(tower)
    state.pop("norm.weight")
    with pytest.raises(interop.CheckpointMismatchError, match="missing 1 key.*trunk.norm.weight"):
        interop.load_vision_state_dict(tower, state)
    with pytest.raises(interop.CheckpointMismatchError, match="unrecognised checkpoint layout"):
        interop.load_vision_state_dict(tower, {"foo.bar": torch.zeros(1)})


def test_save_and_read_both_file_formats(tmp_path):
    model = build_clip(get_rung("B16", proxy=True))
    for name in ("clip.pt", "clip.safetensors"):
        path = interop.save_checkpoint(interop.clip_state_dict(model), tmp_path / name)
        loaded = interop.read_checkpoint(path)
        fresh = build_clip(get_rung("B16", proxy=True))
        interop.load_clip_state_dict(fresh, loaded)
        assert all(
            torch.equal(a, b)
            for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        interop.read_checkpoint(tmp_path / "missing.pt")


def test_load_onto_meta_model_materialises_weights():
    source = build_clip(get_rung("L14", proxy=True))
    target = build_clip(get_rung("L14", proxy=True), device="meta")
    interop.load_clip_state_dict(target, source.state_dict())
    assert not any(p.is_meta for p in target.parameters())


# -- what users hold: timm and open_clip EVA-02 models built with their default arguments --------

TIMM_MIM = {  # timm's EVA-02 MIM towers (the ``.mim_in22k`` weights): default global_pool='avg'
    "eva02_tiny_patch14_224.mim_in22k": "EVA02-Ti",
    "eva02_small_patch14_224.mim_in22k": "EVA02-S",
    "eva02_base_patch14_224.mim_in22k": "EVA02-B",
    "eva02_large_patch14_224.mim_in22k": "EVA02-L",
}
TIMM_CLIP = {  # timm's EVA-02-CLIP vision towers (global_pool='token', head = the projection)
    "eva02_base_patch16_clip_224": "B16",
    "eva02_large_patch14_clip_224": "L14",
}
TIMM_CLIP_META = {"eva02_enormous_patch14_clip_224": "EVA02-CLIP-E-14"}
OPEN_CLIP = {"EVA02-B-16": "B16", "EVA02-L-14": "L14"}
OPEN_CLIP_META = {"EVA02-L-14-336": "EVA02-CLIP-L-14-336", "EVA02-E-14": "EVA02-CLIP-E-14",
                  "EVA02-E-14-plus": "E14"}


def _timm_meta(name: str):
    with torch.device("meta"), mock.patch("timm.models.eva.trunc_normal_", lambda t, *a, **k: t):
        return timm.create_model(name, pretrained=False)


def test_every_open_clip_eva02_model_is_covered():
    listed = {m for m in open_clip.list_models() if m.startswith("EVA02-")}
    assert listed == set(OPEN_CLIP) | set(OPEN_CLIP_META)


@pytest.mark.parametrize("name", sorted(TIMM_MIM))
def test_timm_default_mim_tower_loads_as_is_with_equal_features(name):
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()  # default args: fc_norm, no head
    assert "fc_norm.weight" in reference.state_dict() and "norm.weight" not in reference.state_dict()
    tower = build_vision(get_rung(TIMM_MIM[name]).mim, device="meta")
    interop.load_vision_state_dict(tower, reference.state_dict())
    tower.eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference.fc_norm(reference.forward_features(images))  # the same LayerNorm per token
        assert torch.allclose(tower.forward_tokens(images), expected, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TIMM_CLIP))
def test_timm_default_clip_tower_loads_as_is_with_equal_embeddings(name):
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    tower = build_vision(get_rung(TIMM_CLIP[name]).vision, device="meta")
    interop.load_vision_state_dict(tower, reference.state_dict())
    tower.eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(tower(images), reference(images), atol=1e-5)


@pytest.mark.parametrize("name", sorted(TIMM_CLIP_META))
def test_timm_default_large_clip_tower_loads_on_meta(name):
    tower = build_vision(get_rung(TIMM_CLIP_META[name]).vision, device="meta")
    interop.load_vision_state_dict(tower, _timm_meta(name).state_dict())  # keys and shapes checked
    assert not any(p.is_meta for p in tower.parameters()) or all(p.is_meta for p in tower.parameters())


@pytest.mark.parametrize("name", sorted(OPEN_CLIP))
def test_open_clip_eva02_model_loads_as_is_with_equal_embeddings(name):
    torch.manual_seed(0)
    reference = open_clip.create_model(name, pretrained=None).eval()
    ours = build_clip(get_rung(OPEN_CLIP[name]), device="meta")
    interop.load_clip_state_dict(ours, reference.state_dict())
    ours.eval()
    size = get_rung(OPEN_CLIP[name]).vision.image_size
    images = torch.randn(1, 3, size, size)
    tokens = open_clip.get_tokenizer(name)(["a photo of a dog"])
    with torch.no_grad():
        assert torch.allclose(reference.encode_image(images, normalize=True), ours.encode_image(images), atol=1e-5)
        assert torch.allclose(reference.encode_text(tokens, normalize=True), ours.encode_text(tokens), atol=1e-5)


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_META))
def test_open_clip_large_eva02_model_loads_on_meta(name):
    # open_clip's device= only moves the built model: build it under the meta device instead
    # (E/14+ at fp32 would otherwise take ~20 GB of host memory)
    with torch.device("meta"), mock.patch("timm.models.eva.trunc_normal_", lambda t, *a, **k: t):
        reference = open_clip.create_model(name, pretrained=None, device="meta")
    ours = build_clip(get_rung(OPEN_CLIP_META[name]), device="meta")
    interop.load_clip_state_dict(ours, reference.state_dict())  # every key and shape checked
    assert set(interop.clip_state_dict(ours)) == set(reference.state_dict())
