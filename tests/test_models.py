from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pneumolens.config import AugmentConfig, resolve_config
from pneumolens.data.augment import (
    mixup,
    random_affine,
    random_bias_field,
    random_blur,
    random_flip_erase,
    random_intensity,
)
from pneumolens.models import create_model, model_names


@pytest.mark.parametrize(
    "name, channels, size", [("seed_cnn", 3, 64), ("resnet_small", 1, 128), ("resnet_small", 1, 96)]
)
def test_models_map_batch_to_logits(name, channels, size):
    m = create_model(name, in_channels=channels, image_size=size).eval()
    x = torch.rand(2, channels, size, size)
    assert m(x).shape == (2,)
    assert m.forward_head(m.forward_features(x)).shape == (2,)
    assert m.forward_features(x).shape[1] == m.num_features  # what the training-only subtype head reads
    assert dict(m.named_modules())[m.feature_layer] is not None


def test_gem_pooling_spans_average_to_max():
    from pneumolens.models.resnet_small import GeM

    f = torch.rand(2, 3, 4, 4)
    gem = GeM(p=1.0)
    assert torch.allclose(gem(f), f.mean((2, 3), keepdim=True), atol=1e-6)
    gem.p.data.fill_(60.0)
    assert torch.allclose(gem(f), f.amax((2, 3), keepdim=True), rtol=0.05)
    m = create_model("resnet_small", in_channels=1, image_size=64, pool="gem")
    m(torch.rand(2, 1, 64, 64)).sum().backward()
    assert m.pool.p.grad is not None and m.pool.p.grad.abs() > 0  # the exponent is learnt
    with pytest.raises(ValueError, match="unknown pool 'max'"):
        create_model("resnet_small", pool="max")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_global_avg_pool_is_the_adaptive_pool_bit_for_bit(dtype):
    # the swap (for a deterministic CUDA backward) must not move a single bit of CPU training
    from pneumolens.models.resnet_small import GlobalAvgPool

    torch.manual_seed(0)
    for shape in ((32, 256, 4, 4), (3, 64, 5, 7)):
        x = torch.randn(*shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = torch.nn.AdaptiveAvgPool2d(1)(a), GlobalAvgPool()(b)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)
    m = create_model("resnet_small", in_channels=1, image_size=64)
    assert not any(isinstance(mod, torch.nn.AdaptiveAvgPool2d) for mod in m.modules())


def test_seed_cnn_has_the_keras_parameter_count():
    # Keras model.summary() of the seed's network at 64x64x3: 896 + 18,496 + 73,856 + 147,584 (convs)
    # + 262,272 + 16,512 + 66,048 + 513 (dense) = 586,177 parameters.
    m = create_model("seed_cnn", in_channels=3, image_size=64)
    assert sum(p.numel() for p in m.parameters()) == 586_177


def test_seed_cnn_pool_then_relu_is_keras_relu_then_pool():
    torch.manual_seed(0)
    m = create_model("seed_cnn", in_channels=3, image_size=64).eval()
    x = torch.rand(4, 3, 64, 64) - 0.5
    keras_order = x
    for i in range(0, 12, 3):  # Keras: conv, ReLU, pool
        conv, pool = m.features[i], m.features[i + 1]
        assert isinstance(conv, torch.nn.Conv2d) and isinstance(pool, torch.nn.MaxPool2d)
        keras_order = pool(torch.relu(conv(keras_order)))
    assert torch.allclose(m.forward_features(x), keras_order, atol=1e-6)
    assert torch.allclose(m(x), m.forward_head(keras_order), atol=1e-6)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="valid: " + ", ".join(model_names())):
        create_model("vgg99")


def test_augment_identity_when_ranges_are_zero():
    x = torch.rand(4, 1, 32, 32)
    y = random_affine(x, AugmentConfig(rotation=0, shift=0, zoom=0))
    assert torch.equal(x, y)


def test_augment_moves_content_and_stays_in_range():
    x = torch.zeros(8, 1, 32, 32)
    x[:, :, 12:20, 12:20] = 1.0
    g = torch.Generator().manual_seed(0)
    y = random_affine(x, AugmentConfig(rotation=10, shift=0.2, zoom=0.1), generator=g)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    centres = [(yy[0] > 0.5).nonzero().float().mean(0) for yy in y]
    assert len({tuple(c.round().tolist()) for c in centres}) > 1  # each image got its own transform
    shift_only = random_affine(x, AugmentConfig(rotation=0, shift=0.2, zoom=0), generator=g)
    assert (shift_only.sum((1, 2, 3)) - x.sum((1, 2, 3))).abs().max() < 1.0  # a shift keeps the square


def test_intensity_augment_is_per_image_monotone_and_in_range():
    x = torch.linspace(0, 1, 64).repeat(8, 1, 64, 1)  # a horizontal ramp, 8 copies
    assert torch.equal(random_intensity(x, AugmentConfig()), x)
    g = torch.Generator().manual_seed(0)
    y = random_intensity(x, AugmentConfig(gamma=0.5), generator=g)
    assert y.min() >= 0 and y.max() <= 1
    assert (y[..., 1:] >= y[..., :-1] - 1e-6).all()  # gamma keeps the order of intensities
    assert torch.allclose(y[..., 0], x[..., 0]) and torch.allclose(y[..., -1], x[..., -1])  # 0 and 1 stay
    mids = y[:, 0, 0, 32]
    assert mids.unique().numel() == 8  # each image drew its own gamma
    assert mids.min() >= (32 / 63) ** 1.5 - 1e-4  # gamma within [1/1.5, 1.5]
    assert mids.max() <= (32 / 63) ** (1 / 1.5) + 1e-4
    c = random_intensity(x, AugmentConfig(contrast=0.5), generator=g)
    spread = c.amax((1, 2, 3)) - c.amin((1, 2, 3))
    assert spread.min() >= 0.5 - 1e-5 and spread.unique().numel() > 1


def test_flip_and_erase_act_per_image_with_their_probability():
    x = torch.linspace(0, 1, 32).repeat(64, 1, 32, 1)  # 64 copies of a left-to-right ramp
    assert random_flip_erase(x, AugmentConfig()) is x
    g = torch.Generator().manual_seed(0)
    f = random_flip_erase(x, AugmentConfig(hflip=0.5), generator=g)
    flipped = (f[:, 0, 0, 0] == 1).sum().item()  # a mirrored ramp starts at 1
    assert 16 < flipped < 48 and torch.equal(f[f[:, 0, 0, 0] == 1], x[:1].flip(-1).expand(flipped, -1, -1, -1))
    assert torch.equal(f[f[:, 0, 0, 0] == 0], x[: 64 - flipped])  # the others are untouched
    e = random_flip_erase(x, AugmentConfig(erase=0.5), generator=g)
    changed = (e != x).flatten(1).float().mean(1)  # share of each image's pixels that changed
    hit = changed > 0
    assert 16 < hit.sum().item() < 48
    assert changed.max() <= 0.25 and changed[hit].min() > 0.005  # one rectangle of 2-20% of the area
    assert torch.allclose(e[hit][e[hit] != x[hit]], torch.tensor(0.5))  # filled with the image's mean
    box = (e[hit][0, 0] != x[0, 0]).nonzero()
    rows, cols = box[:, 0], box[:, 1]
    assert len(box) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a filled rectangle
    with pytest.raises(ValueError, match="probabilities"):
        resolve_config("default", erase=1.5)


def test_blur_is_a_normalised_gaussian_of_its_own_width_per_image():
    x = torch.zeros(16, 1, 33, 33)
    x[:, :, 16, 16] = 1.0  # a point: its blur is the kernel itself
    assert random_blur(x, AugmentConfig()) is x
    b = random_blur(x, AugmentConfig(blur=2.0), generator=torch.Generator().manual_seed(0))
    for img in b[:, 0]:
        k = img.sum(0)  # the 1-D kernel (rows sum to it because it is normalised)
        assert torch.allclose(img, torch.outer(k, k), atol=1e-6)  # separable: a Gaussian in x times one in y
        assert math.isclose(img.sum().item(), 1.0, rel_tol=1e-5) and torch.allclose(k, k.flip(0), atol=1e-7)
        assert (k[:16].diff() >= -1e-7).all() and (k[17:].diff() <= 1e-7).all()  # one peak, in the middle
    peaks = b[:, 0, 16, 16]
    assert peaks.max() - peaks.min() > 0.1  # each image its own sigma
    flat = torch.full((4, 1, 20, 20), 0.3)  # reflect padding: a flat image stays flat, even at the border
    assert torch.allclose(random_blur(flat, AugmentConfig(blur=3.0)), flat, atol=1e-6)
    ramp = torch.linspace(0, 1, 32).repeat(2, 3, 32, 1)  # three channels of one image get the same sigma
    out = random_blur(ramp + torch.rand(2, 1, 32, 32), AugmentConfig(blur=1.5))
    assert torch.allclose(out[:, 0] - out[:, 1], ramp[:, 0] - ramp[:, 1], atol=1e-5)


def test_bias_field_is_a_ramp_of_its_own_strength_and_direction_per_image():
    x = torch.full((64, 2, 33, 33), 0.4)  # flat films: the output is the field itself, times 0.4
    assert random_bias_field(x, AugmentConfig()) is x
    out = random_bias_field(x, AugmentConfig(bias_field=0.15), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], out[:, 1])  # the channels of one film share its field
    log_field = (out[:, 0] / 0.4).log()
    assert torch.allclose(log_field[:, 16, 16], torch.zeros(64), atol=1e-6)  # the centre keeps its value
    assert torch.allclose(log_field, -log_field.flip(-1, -2), atol=1e-5)  # odd about the centre: a plane
    gx = (log_field[:, :, 1:] - log_field[:, :, :-1]).mean((1, 2)) * 16  # slope per half side, along x and y
    gy = (log_field[:, 1:, :] - log_field[:, :-1, :]).mean((1, 2)) * 16
    strength = (gx**2 + gy**2).sqrt()
    assert strength.max() <= 0.15 + 1e-4 and strength.max() > 0.1  # |s| within B, and the range is used
    angles = torch.atan2(gy, gx)
    assert (angles > 0).any() and (angles < 0).any() and (gx.abs() > gy.abs()).any() and (gy.abs() > gx.abs()).any()
    bright = random_bias_field(torch.ones(8, 1, 16, 16), AugmentConfig(bias_field=0.5))
    assert bright.max() <= 1 and bright.min() < 1  # clipped to [0, 1]
    with pytest.raises(ValueError, match="augmentation ranges"):
        resolve_config("default", bias_field=-0.1)
    assert resolve_config("default", bias_field=0.15).augment.bias_field == 0.15


def test_mixup_blends_images_labels_and_weights_alike():
    torch.manual_seed(0)
    # image i is constant i, label i % 2, weight 1 + i: every mixed sample must stay consistent
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 4, 4).contiguous()
    y, w = torch.arange(8.0) % 2, 1 + torch.arange(8.0)
    assert mixup(x, y, w, 0.0)[0] is x
    mx, my, mw = mixup(x, y, w, 0.4)
    assert not torch.equal(mx, x) and (mx.amax((1, 2, 3)) == mx.amin((1, 2, 3))).all()  # one blend per image
    v = mx[:, 0, 0, 0]  # = lam * i + (1 - lam) * j, so the weight is 1 + v and both come from lam and j
    assert torch.allclose(mw, 1 + v, atol=1e-5)
    assert ((my >= 0) & (my <= 1)).all() and my.unique().numel() > 2  # soft labels


def test_drop_path_drops_whole_residual_branches_and_only_in_training():
    from pneumolens.models.resnet_small import DropPath, ResNetSmall

    torch.manual_seed(0)
    x = torch.ones(4000, 3, 2, 2)
    d = DropPath(0.25).train()
    y = d(x)
    per_sample = y.flatten(1)
    kept = per_sample[:, 0] > 0
    assert torch.all(per_sample[kept] == 1 / 0.75) and torch.all(per_sample[~kept] == 0)  # whole samples
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert torch.equal(d.eval()(x), x)
    with pytest.raises(ValueError, match="drop_path"):
        DropPath(1.0)
    # Rates rise linearly over the blocks; zero leaves the network (and the shipped weights' keys) as it was.
    m = ResNetSmall(drop_path=0.2)
    assert [getattr(b.drop_path, "p", 0.0) for b in m.stages] == pytest.approx([0, 0.05, 0.1, 0.15, 0.2])
    assert ResNetSmall().state_dict().keys() == m.state_dict().keys()
    assert all(isinstance(b.drop_path, torch.nn.Identity) for b in ResNetSmall().stages)
    m.eval()
    assert torch.equal(m(torch.ones(2, 1, 64, 64)), m(torch.ones(2, 1, 64, 64)))  # deterministic at evaluation


@pytest.mark.parametrize("k, field", [(0, 7), (1, 19), (2, 43)])
def test_spatial_blocks_cap_the_receptive_field(k, field):
    """Hand count: the stem's two 3x3 convs see 3 + 2*2 = 7 px; each 3x3 residual block adds two 3x3
    convs at its input's and its output's stride (block 1: 2*2 + 2*4 -> 19; block 2: 2*4 + 2*8 -> 43);
    1x1 blocks add nothing."""
    from pneumolens.models.resnet_small import ResNetSmall

    torch.manual_seed(0)
    m = ResNetSmall(spatial_blocks=k).eval()
    with torch.no_grad():  # positive weights, so no gradient cancels inside the field
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.abs_()
            elif isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.fill_(1.0)
    x = torch.rand(1, 1, 256, 256, requires_grad=True)
    f = m.forward_features(x)
    f[0, :, 4, 4].sum().backward()
    rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (field, field)
    uncapped = ResNetSmall()
    assert m.state_dict().keys() == uncapped.state_dict().keys()  # the same layers, only their kernels shrink
    assert all(c.kernel_size == (1, 1) for b in list(m.stages)[k:] for c in (b.conv1[0], b.conv2[0]))
    assert all(c.kernel_size == (3, 3) for b in list(m.stages)[:k] for c in (b.conv1[0], b.conv2[0]))
    for bad in (6, 2.5, "2"):
        with pytest.raises(ValueError, match="spatial_blocks"):
            ResNetSmall(spatial_blocks=bad)


def test_blurpool_keeps_flat_images_and_removes_the_checkerboard():
    from pneumolens.models.resnet_small import BlurPool, ResNetSmall

    b = BlurPool(2)
    flat = torch.full((1, 2, 8, 8), 0.7)
    assert torch.allclose(b(flat), torch.full((1, 2, 4, 4), 0.7))  # normalised, edges reflected
    i = torch.arange(8)
    checker = ((i[:, None] + i[None, :]) % 2).float().expand(1, 2, 8, 8)  # the Nyquist frequency
    out = b(checker)
    assert out.shape == (1, 2, 4, 4)
    assert torch.allclose(out[..., 1:, 1:], torch.full((1, 2, 3, 3), 0.5))  # plain striding would give 0 or 1
    assert torch.equal(checker[..., ::2, ::2], torch.zeros(1, 2, 4, 4))
    # The option changes where the network subsamples, not its outputs' shapes or its learnt tensors' count.
    plain, smooth = ResNetSmall(), ResNetSmall(antialias=True)
    x = torch.rand(2, 1, 128, 128)
    assert plain.forward_features(x).shape == smooth.forward_features(x).shape == (2, 256, 4, 4)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in smooth.parameters())
    assert not any("kernel" in k for k in smooth.state_dict())  # the fixed filter is not saved
    with pytest.raises(ValueError, match="antialias must be true or false"):
        ResNetSmall(antialias="false")


def test_standardize_makes_the_output_blind_to_exposure_and_contrast():
    from pneumolens.models.resnet_small import ResNetSmall

    torch.manual_seed(0)
    model = ResNetSmall(standardize=True).eval()
    x = torch.rand(3, 1, 128, 128) * 0.5 + 0.2
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(model(1.8 * x - 0.1), out, atol=1e-4)  # brighter, higher contrast: the same scores
        plain = ResNetSmall().eval()
        plain.load_state_dict(model.state_dict())  # no new tensors: the same weights load either way
        assert not torch.allclose(plain(1.8 * x - 0.1), plain(x), atol=1e-3)
    with pytest.raises(ValueError, match="standardize must be true or false"):
        ResNetSmall(standardize="true")


def test_mixstyle_swaps_feature_statistics_and_keeps_the_content():
    from pneumolens.models.resnet_small import MixStyle

    torch.manual_seed(0)
    x = torch.randn(6, 4, 8, 8) * torch.rand(6, 4, 1, 1) * 3 + torch.randn(6, 4, 1, 1)
    mix = MixStyle(p=1.0).train()
    out = mix(x)

    def stats(t):
        return t.mean((2, 3)), (t.var((2, 3)) + 1e-6).sqrt()

    def standardised(t):
        mu, sig = stats(t)
        return (t - mu[..., None, None]) / sig[..., None, None]

    assert torch.allclose(standardised(out), standardised(x), atol=1e-3)  # the content of each map is kept
    mu, sig = stats(x)
    mu_out, sig_out = stats(out)
    assert not torch.allclose(mu_out, mu, atol=1e-3)  # the statistics were changed
    for i in range(6):  # each sample's new statistics mix its own with one other sample's, by one weight
        fits = []
        for j in range(6):
            lam = ((mu_out[i] - mu[j]) / (mu[i] - mu[j])).median() if j != i else torch.tensor(1.0)
            if torch.allclose(lam * mu[i] + (1 - lam) * mu[j], mu_out[i], atol=1e-3) and torch.allclose(
                lam * sig[i] + (1 - lam) * sig[j], sig_out[i], atol=1e-3
            ):
                fits.append(j)
        assert fits, f"sample {i}: statistics are not a mix of two samples'"
    torch.manual_seed(3)
    a = mix(x)
    torch.manual_seed(3)
    assert torch.equal(mix(x), a)  # seeded runs repeat
    assert torch.equal(mix.eval()(x), x)  # the identity at evaluation
    assert torch.equal(MixStyle(p=0.0).train()(x), x)
    assert torch.equal(MixStyle(p=1.0).train()(x[:1]), x[:1])
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="mixstyle must be a probability"):
            MixStyle(bad)


def test_mixstyle_network_trains_and_evaluates_like_the_plain_one():
    from pneumolens.models.resnet_small import ResNetSmall

    torch.manual_seed(0)
    mixed = ResNetSmall(mixstyle=1.0)
    plain = ResNetSmall()
    assert mixed.state_dict().keys() == plain.state_dict().keys()  # no learnt tensors: the same checkpoints
    plain.load_state_dict(mixed.state_dict())
    x = torch.rand(4, 1, 128, 128)
    with torch.no_grad():
        assert torch.equal(mixed.eval()(x), plain.eval()(x))  # off at evaluation
        mixed.train(), plain.train()
        torch.manual_seed(1)
        assert not torch.allclose(mixed(x), plain(x), atol=1e-4)  # on in training
    mixed(x).sum().backward()
    assert all(p.grad is not None for p in mixed.parameters())
    assert mixed.mix_after == (0, 1, 3)  # after stages 1, 2 and 3 of blocks (1, 1, 2, 1), not after the last
    for bad in ("0.5", True, 2.0):
        with pytest.raises(ValueError, match="mixstyle must be a probability"):
            ResNetSmall(mixstyle=bad)


def test_ibn_instance_normalises_half_the_channels_of_the_early_blocks():
    from pneumolens.models.resnet_small import IBN, ResNetSmall

    torch.manual_seed(0)
    norm = IBN(6).eval()
    x = torch.randn(2, 6, 5, 5)
    scaled = x.clone()
    scaled[:, :3] = scaled[:, :3] * 4 + 2  # exposure and contrast of the instance-normalised half
    scaled[:, 3:] = scaled[:, 3:] * 4 + 2
    out, out_scaled = norm(x), norm(scaled)
    assert torch.allclose(out[:, :3], out_scaled[:, :3], atol=1e-4)  # forgotten by the instance-normalised half
    assert not torch.allclose(out[:, 3:], out_scaled[:, 3:], atol=1e-2)  # kept by the batch-normalised half
    assert torch.allclose(out[:, :3].mean((2, 3)), torch.zeros(2, 3), atol=1e-5)

    model = ResNetSmall(ibn=True)
    with_in = {k.split(".conv1")[0] for k in model.state_dict() if ".IN." in k}
    assert with_in == {"stages.0", "stages.1", "stages.2", "stages.3"}  # the first three stages, not the last
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ResNetSmall().parameters())
    assert model(torch.rand(2, 1, 128, 128)).shape == (2,)
    with pytest.raises(ValueError, match="ibn must be true or false"):
        ResNetSmall(ibn="true")


def _onnx_gap(model: torch.nn.Module, tmp_path) -> float:
    """The largest difference between a model's logits and its ONNX export's, on random inputs."""
    from pathlib import Path

    from pneumolens.checkpoint import LoadedModel
    from pneumolens.export import OnnxModel, export_onnx

    meta = {"preprocessing": resolve_config("default").preprocess.__dict__, "threshold": 0.5, "name": "net"}
    out = export_onnx(LoadedModel(model=model, meta=meta, path=Path("net")), tmp_path / "net.onnx")
    x = torch.rand(3, 1, 128, 128)
    with torch.no_grad():
        expected = model(x).numpy()
    return float(abs(OnnxModel(out).logits(x.numpy()) - expected).max())


def test_ibn_and_mixstyle_networks_export_to_onnx_with_the_same_outputs(tmp_path):
    from pneumolens.models.resnet_small import ResNetSmall

    torch.manual_seed(0)
    model = ResNetSmall(ibn=True, mixstyle=0.5, antialias=True)
    with torch.no_grad():  # non-trivial norm parameters, so a wrong channel order would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    assert _onnx_gap(model.eval(), tmp_path) < 1e-4


def test_halves_read_each_half_of_the_crop_with_the_same_weights_and_take_the_larger():
    from pneumolens.explain.attribution import gradcam
    from pneumolens.models.resnet_small import ResNetSmall

    torch.manual_seed(0)
    model = ResNetSmall(halves=True).eval()
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        left, right = model._backbone(x[..., :64]), model._backbone(x[..., 64:])  # by hand, one half at a time
        assert torch.allclose(model.forward_features(x), torch.cat((left, right), dim=-1), atol=1e-5)
        per_side = torch.stack([model.fc(model.pool(f).flatten(1)).squeeze(1) for f in (left, right)])
        assert torch.allclose(model(x), per_side.max(0).values, atol=1e-5)
        # what lies in one half never reaches the other half's logit
        y = x.clone()
        y[..., 64:] = torch.rand(2, 1, 128, 64)
        assert torch.allclose(model._backbone(y[..., :64]), left)
        # not mirror-blind: the mediastinum's side tells the lungs apart
        assert not torch.allclose(model(x), model(x.flip(-1)), atol=1e-4)
    cam = gradcam(model, x[:1])  # one map per film, over both halves
    assert cam.shape == (128, 128) and cam.max() == pytest.approx(1.0)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ResNetSmall().parameters())
    with pytest.raises(ValueError, match="even input width"):
        model(torch.rand(1, 1, 128, 127))
    with pytest.raises(ValueError, match="halves must be true or false"):
        ResNetSmall(halves="yes")


def test_a_halves_network_exports_to_onnx_with_the_same_outputs(tmp_path):
    from pneumolens.models.resnet_small import ResNetSmall

    torch.manual_seed(0)
    assert _onnx_gap(ResNetSmall(halves=True).eval(), tmp_path) < 1e-4


def test_fused_copy_folds_batch_norm_into_the_convolutions_and_keeps_the_logits():
    """The shipped network with its batch norms folded in (what LIME and occlusion score) gives the
    loaded network's logits on real films; the loaded network itself is left as it was."""
    from conftest import real_images
    from pneumolens.checkpoint import load_model
    from pneumolens.data.images import preprocess, read_image
    from pneumolens.models.fuse import fused_copy

    loaded = load_model(None)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    fused = fused_copy(loaded.model)
    norms = [m for m in loaded.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) > 10 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    paths = real_images("test", "NORMAL", 3) + real_images("test", "PNEUMONIA", 3)
    x = torch.from_numpy(np.stack([preprocess(read_image(p), loaded.preprocess) for p in paths]))  # (6, 1, S, S)
    with torch.inference_mode():
        want, got = loaded.model(x), fused(x)
    assert want.abs().max() > 1 and (want - got).abs().max() < 1e-4
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
    training = create_model("resnet_small", in_channels=1, image_size=64).train()  # batch statistics: not folded
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in fused_copy(training).modules()) == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in training.modules()
    )
