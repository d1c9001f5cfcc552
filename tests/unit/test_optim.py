"""Parameter groups (layer decay, no weight decay), the cosine schedule and LAMB's update rule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scaling.train.optim import (
    CosineSchedule,
    TowerGroups,
    build_optimizer,
    layer_id,
    lr_factor,
    param_groups,
    tower_lrs,
)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


class Tower(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.patch_embed = nn.Linear(4, 4)
        self.blocks = nn.ModuleList(Block() for _ in range(depth))
        self.head = nn.Linear(4, 2)


def by_param(groups):
    return {id(p): g for g in groups for p in g["params"]}


def test_layer_ids_embeddings_blocks_top():
    assert layer_id("pos_embed", 3) == 0
    assert layer_id("patch_embed.weight", 3) == 0
    assert layer_id("blocks.0.fc.weight", 3) == 1
    assert layer_id("transformer.resblocks.2.mlp.c_fc.weight", 3) == 3
    assert layer_id("head.weight", 3) == 4


def test_layer_decay_scales_and_no_weight_decay():
    tower = Tower(depth=3)
    groups = param_groups([TowerGroups("vision", tower, lr=1.0, weight_decay=0.05, layer_decay=0.5)],
                          extra={"logit_scale": nn.Parameter(torch.zeros([]))}, extra_lr=0.1)
    of = by_param(groups)
    assert of[id(tower.head.weight)]["lr"] == pytest.approx(1.0)  # top: depth + 1
    assert of[id(tower.blocks[2].fc.weight)]["lr"] == pytest.approx(0.5)
    assert of[id(tower.blocks[0].fc.weight)]["lr"] == pytest.approx(0.5**3)
    assert of[id(tower.pos_embed)]["lr"] == pytest.approx(0.5**4)
    # decay only on >= 2-D weights that are not embeddings/tokens
    assert of[id(tower.blocks[0].fc.weight)]["weight_decay"] == 0.05
    for p in (tower.blocks[0].fc.bias, tower.blocks[0].norm.weight, tower.pos_embed, tower.cls_token):
        assert of[id(p)]["weight_decay"] == 0.0
    logit = next(g for g in groups if g["name"] == "logit_scale")
    assert logit["weight_decay"] == 0.0 and logit["lr"] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(tower.parameters())) + 1


def test_shared_parameters_are_grouped_once():
    tower = Tower()
    groups = param_groups([TowerGroups("a", tower, 1.0, 0.0), TowerGroups("b", tower, 2.0, 0.0)])
    assert {g["tower"] for g in groups} == {"a"}


def test_lr_factor_warmup_then_cosine_to_min():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)
    assert lr_factor(100, 100, 10, min_factor=0.1) == pytest.approx(0.1)
    values = [lr_factor(s, 100, 10) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_schedule_sets_group_lrs_and_roundtrips():
    tower = Tower()
    groups = param_groups([TowerGroups("vision", tower, 1e-3, 0.0, 0.5)])
    opt = build_optimizer("adamw", groups, (0.9, 0.98), 1e-6)
    sched = CosineSchedule(opt, total_steps=20, warmup_steps=4)
    assert tower_lrs(opt)["vision"] == pytest.approx(1e-3 * 0.25)
    for _ in range(7):
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    other = CosineSchedule(opt, total_steps=20, warmup_steps=4)
    other.load_state_dict(sched.state_dict())
    assert [g["lr"] for g in opt.param_groups] == lrs
    ratio = [g["lr"] / g["peak_lr"] for g in opt.param_groups]
    assert max(ratio) == pytest.approx(min(ratio))  # one factor for every layer


def test_lamb_timm_rule_step_matches_the_formula():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, 4))
    w0 = w.detach().clone()
    grad = torch.randn(3, 4)
    w.grad = grad.clone()
    lr, wd, (b1, b2), eps = 0.1, 0.05, (0.9, 0.98), 1e-6
    opt = build_optimizer("lamb", [{"params": [w], "lr": lr, "weight_decay": wd}], (b1, b2), eps,
                          {"lamb_rule": "timm"})
    opt.step()
    m = (1 - b1) * grad / (1 - b1)
    v = (1 - b2) * grad**2 / (1 - b2)
    update = m / (v.sqrt() + eps) + wd * w0
    trust = w0.norm() / update.norm()
    expected = w0 - lr * trust * update
    torch.testing.assert_close(w.detach(), expected, rtol=1e-5, atol=1e-6)
    # the step length is lr x ||w||, whatever the gradient scale: LAMB's layer-wise adaptivity
    assert (w.detach() - w0).norm() == pytest.approx(lr * w0.norm().item(), rel=1e-4)


class DeepSpeedLamb:
    """DeepSpeed's FusedLamb kernel (csrc/lamb/fused_lamb_cuda_kernel.cu, eps outside the root,
    bias correction on) written out per tensor in float64: the reference for ``rule=deepspeed``."""

    def __init__(self, groups, betas, eps, max_coeff=10.0, min_coeff=0.01):
        self.groups, self.betas, self.eps = groups, betas, eps
        self.max_coeff, self.min_coeff = max_coeff, min_coeff
        self.m = {id(p): torch.zeros_like(p, dtype=torch.float64) for g in groups for p in g["params"]}
        self.v = {id(p): torch.zeros_like(p, dtype=torch.float64) for g in groups for p in g["params"]}
        self.t = 0
        self.coeffs = []

    def zero_grad(self, set_to_none=True):
        for group in self.groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        self.coeffs = []
        for group in self.groups:
            step_size = group["lr"] * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
            for p in group["params"]:
                w, g = p.detach().double(), p.grad.double()
                m, v = self.m[id(p)], self.v[id(p)]
                m.mul_(b1).add_((1 - b1) * g)
                v.mul_(b2).add_((1 - b2) * g * g)
                u = m / (v.sqrt() + self.eps) + group["weight_decay"] * w
                coeff = 1.0
                if w.norm() != 0 and u.norm() != 0:
                    coeff = min(max((w.norm() / u.norm()).item(), self.min_coeff), self.max_coeff)
                self.coeffs.append(coeff)
                p.copy_(w - step_size * coeff * u)


def test_lamb_default_is_deepspeeds_rule_on_every_tensor_over_many_steps():
    ours, ref = _lamb_model(), _lamb_model()
    opt = build_optimizer("lamb", _lamb_groups(ours), (0.9, 0.95), 1e-6)
    ref_opt = DeepSpeedLamb(_lamb_groups(ref), (0.9, 0.95), 1e-6)
    _train(ours, opt, 20)
    _train(ref, ref_opt, 20)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-6)
    # the weight-decay-free group (biases, the norm) was scaled too: not AdamW's move there
    plain = _lamb_model()
    _train(plain, torch.optim.AdamW(_lamb_groups(plain), betas=(0.9, 0.95), eps=1e-6), 20)
    moved = [(a - s).norm() / (b - s).norm() for a, b, s in
             zip(ours.parameters(), plain.parameters(), _lamb_model().parameters(), strict=True)]
    assert all(abs(r.item() - 1) > 0.05 for r in moved)


@pytest.mark.parametrize(("scale", "coeff"), [(100.0, 10.0), (1e-5, 0.01), (0.0, 1.0)])
def test_lamb_deepspeed_rule_clamps_the_trust_ratio(scale, coeff):
    """||w|| / ||u|| beyond 10 steps at 10, below 0.01 at 0.01; a zero tensor takes Adam's step."""
    torch.manual_seed(0)
    w = nn.Parameter(scale * torch.randn(6, 5))
    w0 = w.detach().clone()
    w.grad = torch.randn(6, 5)
    lr, wd, (b1, b2), eps = 0.01, 0.0, (0.9, 0.95), 1e-6
    build_optimizer("lamb", [{"params": [w], "lr": lr, "weight_decay": wd}], (b1, b2), eps).step()
    ref = nn.Parameter(w0.clone())
    ref.grad = w.grad
    reference = DeepSpeedLamb([{"params": [ref], "lr": lr, "weight_decay": wd}], (b1, b2), eps)
    reference.step()
    assert reference.coeffs == [pytest.approx(coeff)]
    torch.testing.assert_close(w.detach(), ref.detach(), rtol=1e-5, atol=1e-7)
    u = (1 - b1) * w.grad / (((1 - b2) * w.grad**2).sqrt() + eps)
    step_size = lr * math.sqrt(1 - b2) / (1 - b1)
    assert (w.detach() - w0).norm().item() == pytest.approx(step_size * coeff * u.norm().item(), rel=1e-4)


def test_lamb_deepspeed_rule_puts_weight_decay_in_the_update():
    torch.manual_seed(0)
    ours, ref = _lamb_model(), _lamb_model()
    opt = build_optimizer("lamb", _lamb_groups(ours, wd=0.1), (0.9, 0.98), 1e-6, {"lamb_max_coeff": 2.0})
    ref_opt = DeepSpeedLamb(_lamb_groups(ref, wd=0.1), (0.9, 0.98), 1e-6, max_coeff=2.0)
    _train(ours, opt, 8)
    _train(ref, ref_opt, 8)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-6)
    assert all(group["weight_decay"] in (0.0, 0.1) for group in opt.param_groups)  # restored
    assert all(group["eps"] == 1e-6 for group in opt.param_groups)


@pytest.mark.parametrize("rung", ["8B", "18B"])
def test_an_eva_clip_recipe_lamb_step_is_not_adamws(rung):
    """EVA-CLIP-8B/18B: LAMB, betas 0.9/0.95, weight decay 0 (EVA-CLIP-18B paper, Tables 12/13). By
    timm's rule that is AdamW; by DeepSpeed's every tensor's step is rescaled."""
    from scaling.config import load_stage_config

    optim = load_stage_config("clip", rung, proxy=False).optim
    assert (optim.name, list(optim.betas), optim.weight_decay) == ("lamb", [0.9, 0.95], 0.0)
    steps = {}
    for name, options in (("lamb", optim), ("timm", {"lamb_rule": "timm"}), ("adamw", None)):
        tower = Tower()
        start = [p.detach().clone() for p in tower.parameters()]
        groups = param_groups([TowerGroups("vision", tower, optim.lr, optim.weight_decay, optim.layer_decay)])
        opt = build_optimizer("adamw" if name == "adamw" else "lamb", groups, optim.betas, optim.eps, options)
        for p in tower.parameters():
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
        opt.step()
        steps[name] = [(p.detach() - s) for p, s in zip(tower.parameters(), start, strict=True)]
    zero = [not p.any() for p in Tower().parameters()]  # pos_embed, cls_token: zero at init
    assert any(zero) and not all(zero)
    for ds, timm, adamw, at_zero in zip(steps["lamb"], steps["timm"], steps["adamw"], zero, strict=True):
        torch.testing.assert_close(timm, adamw)  # timm's rule without weight decay: Adam
        # DeepSpeed's: ratio 1 where ||w|| = 0 (Adam's step), a rescaled step everywhere else
        assert torch.allclose(ds, adamw, rtol=1e-3) == at_zero


def test_lamb_rule_comes_from_the_optim_keys():
    from scaling.config import ConfigError, load_stage_config
    from scaling.train.lamb import Lamb

    cfg = load_stage_config("clip", "18B", proxy=False, overrides=["optim.lamb_rule=timm",
                                                                   "optim.lamb_min_coeff=0.1"])
    opt = build_optimizer("lamb", [{"params": [nn.Parameter(torch.ones(2))], "lr": 0.1}], (0.9, 0.95), 1e-6,
                          cfg.optim)
    assert isinstance(opt, Lamb)
    assert (opt.param_groups[0]["rule"], opt.param_groups[0]["min_coeff"]) == ("timm", 0.1)
    with pytest.raises(ConfigError, match="optim.lamb_rule"):
        load_stage_config("clip", "18B", proxy=False, overrides=["optim.lamb_rule=nvlamb"])
    with pytest.raises(ValueError, match="optim.lamb_min_coeff"):
        build_optimizer("lamb", [{"params": [nn.Parameter(torch.ones(2))], "lr": 0.1}], (0.9, 0.95), 1e-6,
                        {"lamb_min_coeff": 20.0})


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer("sgd", [{"params": [nn.Parameter(torch.zeros(1))]}], (0.9, 0.9), 1e-8)


def test_cosine_factor_midpoint_is_half():
    assert lr_factor(50, 100, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def _lamb_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3))


def _lamb_groups(model: nn.Module, wd: float = 0.05) -> list[dict]:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "lr": 0.02, "weight_decay": wd},
            {"params": rest, "lr": 0.01, "weight_decay": 0.0}]


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 8, generator=gen)
        y = torch.randint(0, 3, (32,), generator=gen)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("trust_clip", [False, True])
def test_lamb_tracks_timm_lamb_over_many_steps(trust_clip):
    from timm.optim import Lamb as TimmLamb

    from scaling.train.lamb import Lamb

    ours, ref = _lamb_model(), _lamb_model()
    opt = Lamb(_lamb_groups(ours), betas=(0.9, 0.98), eps=1e-6, rule="timm", trust_clip=trust_clip)
    ref_opt = TimmLamb(_lamb_groups(ref), betas=(0.9, 0.98), eps=1e-6, max_grad_norm=None,
                       trust_clip=trust_clip)
    start = [p.detach().clone() for p in ours.parameters()]
    _train(ours, opt, 20)
    _train(ref, ref_opt, 20)
    for a, b, s in zip(ours.parameters(), ref.parameters(), start, strict=True):
        assert not torch.equal(a.detach(), s)  # it moved, and exactly as timm's LAMB
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-6)


def test_lamb_resumes_from_its_own_and_from_timm_checkpoints():
    from timm.optim import Lamb as TimmLamb

    from scaling.train.lamb import Lamb

    for rule, kinds in (("timm", (Lamb, TimmLamb)), ("deepspeed", (Lamb,))):
        straight = _lamb_model()
        _train(straight, Lamb(_lamb_groups(straight), betas=(0.9, 0.98), rule=rule), 6)
        for first_kind in kinds:
            model = _lamb_model()
            kwargs = {"max_grad_norm": None} if first_kind is TimmLamb else {"rule": rule}
            first = first_kind(_lamb_groups(model), betas=(0.9, 0.98), **kwargs)
            _train(model, first, 3)
            saved = first.state_dict()
            resumed = Lamb(_lamb_groups(model), betas=(0.9, 0.98), rule=rule)
            resumed.load_state_dict(saved)
            assert all(resumed.state[p]["step"].item() == 3 for p in model.parameters())
            _train_continued(model, resumed, 3)  # DeepSpeed's bias correction picks up at step 4
            for a, b in zip(model.parameters(), straight.parameters(), strict=True):
                torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-6)


def _train_continued(model: nn.Module, opt: torch.optim.Optimizer, done: int) -> None:
    """The steps ``done`` .. 5 of ``_train(model, opt, 6)``, same batches."""
    gen = torch.Generator().manual_seed(1)
    for i in range(6):
        x = torch.randn(32, 8, generator=gen)
        y = torch.randint(0, 3, (32,), generator=gen)
        if i < done:
            continue
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_lamb_without_gradients_or_learning_rate_leaves_parameters_alone():
    from scaling.train.lamb import Lamb

    model = _lamb_model()
    groups = _lamb_groups(model)
    groups[0]["lr"] = 0.0
    opt = Lamb(groups, betas=(0.9, 0.98))
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # no gradients yet: nothing to do
    _train(model, opt, 1)
    for p, b in zip(model.parameters(), before, strict=True):
        if p.ndim >= 2:  # lr 0 for the decayed group: trust ratio of a zero move is harmless
            assert torch.equal(p.detach(), b)
        else:
            assert not torch.equal(p.detach(), b)


def test_lamb_on_a_flat_partition_keeps_per_parameter_ratios():
    """What ZeRO hands the optimizer: parameters packed in one flat tensor with padding."""
    from scaling.train.lamb import FlatLayout, Lamb

    ours, ref = _lamb_model(), _lamb_model()
    ref_opt = Lamb([{"params": [p for p in ref.parameters() if p.ndim >= 2], "lr": 0.02, "weight_decay": 0.05}],
                   betas=(0.9, 0.98))
    weights = [p for p in ours.parameters() if p.ndim >= 2]
    pad = 2
    spans, at = [], 0
    for p in weights:
        spans.append((at, at + p.numel()))
        at += p.numel() + pad
    flat = torch.full((at,), 0.5)  # non-zero padding: it must not move
    for p, (s, e) in zip(weights, spans, strict=True):
        flat[s:e] = p.detach().flatten()
    opt = Lamb([{"params": [flat], "lr": 0.02, "weight_decay": 0.05}], betas=(0.9, 0.98))
    opt.shard(flat, FlatLayout(tuple((i, s, e) for i, (s, e) in enumerate(spans)), len(weights)))
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(32, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        for model in (ref, ours):
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
        ref_opt.step()
        flat.grad = torch.randn(at, generator=gen)  # padding gets gradient noise
        for p, (s, e) in zip(weights, spans, strict=True):
            flat.grad[s:e] = p.grad.flatten()
        opt.step()
        with torch.no_grad():
            for p, (s, e) in zip(weights, spans, strict=True):
                p.copy_(flat[s:e].view_as(p))
    for a, b in zip(weights, [p for p in ref.parameters() if p.ndim >= 2], strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-7)
    padding = torch.cat([flat[e : e + pad] for _, e in spans])
    assert torch.equal(padding, torch.full_like(padding, 0.5))


def test_lamb_refuses_a_layout_that_does_not_fit():
    from scaling.train.lamb import FlatLayout, Lamb

    flat = torch.zeros(10, requires_grad=True)
    opt = Lamb([flat])
    with pytest.raises(ValueError, match="outside a flat tensor of 10 elements"):
        opt.shard(flat, FlatLayout(((0, 4, 12),), 1))


def test_unreadable_zero_bookkeeping_is_a_clear_error():
    from scaling.train.zero_layout import ZeroLayoutError, zero_layouts

    with pytest.raises(ZeroLayoutError, match=r"ZeRO-1.*optim.name=adamw or distributed.zero_stage=0"):
        zero_layouts(object(), 1)


def test_lamb_refuses_a_partition_it_has_no_layout_for():
    from scaling.train.lamb import FlatLayout, Lamb

    registered, replaced = torch.ones(6, requires_grad=True), torch.ones(6, requires_grad=True)
    opt = Lamb([registered, replaced])
    opt.shard(registered, FlatLayout(((0, 0, 6),), 1))
    registered.grad, replaced.grad = torch.ones(6), torch.ones(6)
    with pytest.raises(RuntimeError, match="no layout for"):
        opt.step()


def test_a_zero_layout_that_misses_elements_stops_the_stage():
    from types import SimpleNamespace

    from scaling.train.lamb import FlatLayout
    from scaling.train.zero_layout import ZeroLayoutError, check_layouts

    zero = SimpleNamespace(bit16_groups=[[torch.zeros(10), torch.zeros(6)]])
    flat = torch.zeros(16)
    check_layouts([(flat, FlatLayout(((0, 0, 10), (1, 10, 16)), 2))], zero, 1)  # exact: accepted
    with pytest.raises(ZeroLayoutError, match="do not add up"):
        check_layouts([(flat, FlatLayout(((0, 0, 10), (1, 10, 15)), 2))], zero, 1)
    with pytest.raises(ZeroLayoutError, match="past its partition"):
        check_layouts([(flat, FlatLayout(((0, 0, 10), (1, 10, 17)), 2))], zero, 1)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_logit_scale_is_clamped_at_ln_100_after_every_step(name):
    """open_clip / EVA-CLIP: ``logit_scale.clamp_(0, ln 100)`` after each optimizer step; no
    other parameter is touched."""
    tower = Tower()
    logit_scale = nn.Parameter(torch.tensor(math.log(100) - 1e-3))
    groups = param_groups([TowerGroups("vision", tower, 0.5, 0.0)], extra={"logit_scale": logit_scale},
                          extra_lr=5.0)
    opt = build_optimizer(name, groups, (0.9, 0.98), 1e-6)
    for sign in (-1.0, 1.0):  # a step up past the bound, then one below zero
        for _ in range(10):
            logit_scale.grad = torch.tensor(sign)
            for p in tower.parameters():
                p.grad = torch.full_like(p, 100.0)
            opt.step()
        assert logit_scale.item() == pytest.approx(math.log(100) if sign < 0 else 0.0)
    assert any(p.abs().max() > math.log(100) for p in tower.parameters())  # left alone
