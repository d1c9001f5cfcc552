"""The MIM target is the teacher CLIP's image-text aligned patch features (EVA-02): its patch
tokens after the final norm and the CLIP head, at its embedding dim."""

from __future__ import annotations

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from scaling import costs  # noqa: E402
from scaling.models import interop  # noqa: E402
from scaling.models.build import build_clip, build_mim  # noqa: E402
from scaling.models.losses import teacher_targets  # noqa: E402
from scaling.models.registry import get_rung  # noqa: E402


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_target_is_the_open_clip_teachers_encode_image_path_on_every_patch():
    torch.manual_seed(0)
    reference = open_clip.create_model("EVA02-B-16", pretrained=None).eval()  # random init
    ours = build_clip(get_rung("B16"), device="meta")
    interop.load_clip_state_dict(ours, reference.state_dict())
    teacher = ours.visual.eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        target = teacher_targets(teacher, images, 224)
        pooled = reference.encode_image(images, normalize=False)
        # open_clip's own image path, with its pooling switched off: every token projected
        reference.visual.trunk.global_pool = ""
        tokens = reference.encode_image(images, normalize=False)
    embed_dim = reference.visual.trunk.num_classes
    assert embed_dim == get_rung("B16").vision.embed_dim == 512 != get_rung("B16").vision.width
    assert tokens.shape == (1, 1 + 196, embed_dim)
    torch.testing.assert_close(tokens[:, 0], pooled)  # the class token is encode_image's output
    assert target.shape == (1, 196, embed_dim)
    torch.testing.assert_close(target, tokens[:, 1:], rtol=1e-5, atol=1e-5)


def test_student_head_and_costs_take_the_teachers_embedding_dim():
    student, teacher = get_rung("18B"), get_rung("E14")
    dim = costs.mim_target_dim(teacher, student.mim)
    assert dim == teacher.vision.embed_dim == 1024  # E/14+: width 1792, CLIP embedding 1024
    assert costs.mim_target_dim(teacher.vision, student.mim) == dim
    model = build_mim(student, dim, device="meta")
    assert model.head.out_features == dim
    n = sum(p.numel() for p in model.parameters())
    assert n == costs.params(student.mim) + costs.mim_head_params(student.mim, dim)
    mem = costs.memory_per_gpu(student, "mim", 8, 4, 3, teacher=teacher)
    wide = costs.memory_per_gpu(student, "mim", 8, 4, 3, teacher=None)  # no teacher: student width
    assert mem["weights"] < wide["weights"]
    # the teacher's CLIP head runs on every patch: 255 more projections than its pooled forward
    v = teacher.vision
    extra = costs.teacher_forward_flops(teacher) - costs.forward_flops(v)
    assert extra == pytest.approx(2 * (v.num_patches - 1) * v.width * v.embed_dim)


def test_a_tower_without_projection_has_no_aligned_tokens():
    from scaling.models.build import build_vision

    tower = build_vision(get_rung("B16", proxy=True).mim)
    assert not tower.spec.embed_dim
    with pytest.raises(ValueError, match="no CLIP projection"):
        tower.forward_aligned_tokens(torch.randn(1, 3, tower.spec.image_size, tower.spec.image_size))
