"""DOLG and ArcFace: the properties the method rests on."""

import numpy as np
import pytest
import torch

from photoid.models import create_model
from photoid.models.arcface import ArcFaceHead, adaptive_margins
from photoid.models.dolg import DOLG
from photoid.models.layers import GeM, orthogonal_fusion


def test_fused_local_features_are_orthogonal_to_the_global_one():
    torch.manual_seed(0)
    f_l, f_g = torch.randn(4, 32, 5, 7) * 3, torch.randn(4, 32) * 10
    f_orth = orthogonal_fusion(f_l, f_g)
    dots = torch.einsum("bchw,bc->bhw", f_orth, f_g)
    scale = f_l.norm(dim=1) * f_g.norm(dim=1)[:, None, None]
    assert (dots.abs() / scale).max() < 1e-5  # ≈ 0 at every location
    # the ‖f_g‖ denominator (without the square) is not orthogonal: the test can tell them apart
    wrong = f_l - (torch.einsum("bchw,bc->bhw", f_l, f_g) / f_g.norm(dim=1)[:, None, None]).unsqueeze(1) * f_g[:, :, None, None]
    assert (torch.einsum("bchw,bc->bhw", wrong, f_g).abs() / scale).max() > 0.1


def test_gem_between_mean_and_max():
    x = torch.rand(2, 3, 4, 4) + 0.1
    assert torch.allclose(GeM(p=1.0)(x), x.mean(dim=(-2, -1)), atol=1e-5)
    high = GeM(p=50.0)(x)
    assert (high <= x.amax(dim=(-2, -1)) + 1e-4).all() and (high > x.mean(dim=(-2, -1))).all()


@pytest.mark.parametrize("backbone", ["efficientnet_b0", "resnet18", "convnext_atto"])
def test_dolg_output_shape_for_three_backbone_families(backbone):
    model = DOLG(backbone, embedding_dim=64, local_dim=32, dilations=(1, 2, 3)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, 64) and torch.isfinite(out).all()


def test_margins_shrink_with_class_size_and_stay_in_bounds():
    counts = [1, 2, 4, 10, 50, 400]
    m = adaptive_margins(counts, "minmax", m_min=0.05, m_max=0.35)
    assert np.all(np.diff(m) < 0)
    assert m[0] == pytest.approx(0.35) and m[-1] == pytest.approx(0.05)
    p = adaptive_margins(counts, "power", a=0.271, p=-0.364, b=0.05)
    assert np.all(np.diff(p) < 0) and np.all(p > 0.05) and p[0] == pytest.approx(0.321)


def test_non_target_logit_is_s_cos_and_target_carries_the_margin():
    torch.manual_seed(0)
    head = ArcFaceHead(dim=8, n_classes=5, margins=[0.1, 0.2, 0.3, 0.4, 0.5], scale=20.0)
    emb, labels = torch.randn(3, 8), torch.tensor([0, 2, 4])
    cos = head.cosine(emb)
    logits = head(emb, labels)
    mask = torch.ones_like(cos, dtype=torch.bool)
    mask[torch.arange(3), labels] = False
    assert torch.allclose(logits[mask], 20.0 * cos[mask])
    theta = torch.acos(cos[torch.arange(3), labels])
    expected = 20.0 * torch.cos(theta + head.margins[labels])
    assert torch.allclose(logits[torch.arange(3), labels], expected, atol=1e-4)


def test_subcenter_takes_the_best_of_k():
    head = ArcFaceHead(dim=2, n_classes=2, margins=0.2, scale=1.0, subcenters=2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    cos = head.cosine(torch.tensor([[0.0, 3.0]]))
    assert cos.tolist() == [[pytest.approx(1.0), pytest.approx(0.0)]]  # class 0's second centre matches


def test_no_nan_at_the_extremes_in_bf16():
    head = ArcFaceHead(dim=4, n_classes=3, margins=0.5, scale=30.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    emb = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [1.0, 0, 0, 0]], requires_grad=True)  # cos = +1 and -1
    labels = torch.tensor([0, 0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(emb.bfloat16(), labels)
        loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all() and torch.isfinite(emb.grad).all()
    # the logit keeps falling as θ grows, even past θ + m = π
    assert logits[1, 0] < logits[0, 0]


def test_dolg_config_round_trip(tmp_path):
    from photoid.models import load_model, save_model

    config = dict(kind="dolg", backbone="resnet18", embedding_dim=16, local_dim=8, dilations=[1, 2], n_classes=4,
                  margins=[0.3] * 4, scale=10.0, subcenters=2)
    model = create_model(config).eval()
    save_model(tmp_path / "m.pt", model, config)
    again, ckpt = load_model(tmp_path / "m.pt")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.embed(x), again.eval().embed(x))
    assert ckpt["config"]["backbone"] == "resnet18"


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18", "convnext_atto"])
def test_the_global_branch_pools_the_backbones_final_activated_features(backbone):
    """Not the last block's raw output: in EfficientNet and ConvNeXt that has no activation (half of
    it negative, which GeM's clamp would zero)."""
    model = DOLG(backbone, embedding_dim=16, local_dim=8, dilations=(1, 2)).eval()
    x = torch.randn(2, 3, 64, 64)
    pooled = {}
    model.gem.register_forward_hook(lambda m, inp, out: pooled.update(x=inp[0]))
    with torch.no_grad():
        model(x)
        final = model.backbone.forward_features(x)
    assert torch.allclose(pooled["x"], final, atol=1e-5)
    if backbone == "efficientnet_lite0":  # ReLU6 after conv_head + bn2: nothing negative left to clamp
        assert (pooled["x"] >= 0).all()


def test_local_features_are_normalised_before_the_relu():
    """DOLG normalises bn(conv(x)), negative half included, and weights it by the attention score."""
    from photoid.models.layers import SpatialAttention

    torch.manual_seed(0)
    att = SpatialAttention(8, 16).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        out = att(x)
        h = att.bn(att.conv(x))
        expected = torch.nn.functional.normalize(h, dim=1) * torch.nn.functional.softplus(att.score(torch.relu(h)))
    assert (out < 0).any()  # a normalised ReLU output could not be negative
    assert torch.allclose(out, expected, atol=1e-6)


def test_dolg_under_two_gloo_processes_gets_a_gradient_for_every_backbone_parameter():
    """DDP stops at step 2 when a parameter gets no gradient: with the global branch on the final
    features, every EfficientNet module (conv_head, bn2 included) takes part."""
    model = create_model(dict(kind="dolg", backbone="efficientnet_lite0", embedding_dim=16, local_dim=8,
                              dilations=[1, 2], n_classes=3, margins=[0.3] * 3, scale=10.0))
    y = torch.tensor([0, 1, 2, 0])
    model(torch.randn(4, 3, 64, 64), y).logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
