import pytest
import torch
from torch import nn

from cifar10_latency import models
from cifar10_latency.data import normalize
from cifar10_latency.models import build_model, count_parameters, init_whitening, weight_size_bytes


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_gives_ten_logits(name):
    torch.manual_seed(0)
    model = build_model(name).eval()

    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 32, 32))

    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_builds_fresh_weights(name):
    torch.manual_seed(0)
    first = build_model(name)
    torch.manual_seed(1)
    second = build_model(name)

    # Random initialisation, never downloaded weights: another seed gives other weights.
    differs = [not torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()) if a.requires_grad]
    assert any(differs)


def test_resnet18_cifar_param_count():
    model = build_model("resnet18_cifar")

    assert count_parameters(model) == 11_173_962


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_size_bytes_matches_state(name):
    model = build_model(name)
    params = count_parameters(model)
    float_buffers = sum(b.numel() for b in model.buffers() if b.dtype == torch.float32)
    # BatchNorm's num_batches_tracked is an int64 scalar: 8 bytes each.
    int64_buffers = sum(b.numel() for b in model.buffers() if b.dtype == torch.int64)

    assert weight_size_bytes(model) == 4 * (params + float_buffers) + 8 * int64_buffers


def test_size_bytes_halves_in_fp16():
    model = build_model("plain_cnn", widths=[8, 16], convs_per_stage=1, stem_width=8)
    int64_bytes = sum(8 * b.numel() for b in model.buffers() if b.dtype == torch.int64)
    fp32 = weight_size_bytes(model) - int64_bytes

    fp16 = weight_size_bytes(model.half()) - int64_bytes

    assert fp16 * 2 == fp32


def test_count_parameters_plain_cnn():
    model = build_model("plain_cnn", widths=[8], convs_per_stage=1, stem_width=4)

    # Stem conv 3->4 (3x3, no bias) and BN(4), stage conv 4->8 and BN(8), then linear 8->10 without bias.
    expected = 3 * 4 * 9 + 2 * 4 + 4 * 8 * 9 + 2 * 8 + 8 * 10
    assert count_parameters(model) == expected


def test_mobilenet_cifar_stem_stride():
    cifar = build_model("mobilenet_v3_small", cifar_stem=True)
    imagenet = build_model("mobilenet_v3_small", cifar_stem=False)

    assert cifar.features[0][0].stride == (1, 1)
    assert imagenet.features[0][0].stride == (2, 2)


def test_mobilenet_cifar_stem_resolution():
    x = torch.randn(1, 3, 32, 32)
    cifar = build_model("mobilenet_v3_small", cifar_stem=True).eval()
    imagenet = build_model("mobilenet_v3_small", cifar_stem=False).eval()

    with torch.inference_mode():
        cifar_map = cifar.features[0](x)
        imagenet_map = imagenet.features[0](x)

    assert cifar_map.shape[-2:] == (32, 32)
    assert imagenet_map.shape[-2:] == (16, 16)


def test_shufflenet_cifar_stem():
    cifar = build_model("shufflenet_v2_x1_0", cifar_stem=True)
    imagenet = build_model("shufflenet_v2_x1_0", cifar_stem=False)

    assert cifar.conv1[0].stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    assert imagenet.conv1[0].stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)


def test_resnet18_cifar_stem():
    model = build_model("resnet18_cifar")

    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)


def test_build_unknown_model():
    with pytest.raises(ValueError) as error:
        build_model("vgg_huge")

    assert "vgg_huge" in str(error.value)


@pytest.mark.parametrize("name, config", [
    ("plain_cnn", {"depth": 3}),
    ("resnet18_cifar", {"cifar_stem": False}),
    ("mobilenet_v3_small", {"width_mult": 0.5}),
])
def test_build_bad_config(name, config):
    with pytest.raises(ValueError) as error:
        build_model(name, **config)

    assert name in str(error.value)


@pytest.mark.parametrize("config", [
    {"widths": []},
    {"convs_per_stage": 0},
    {"activation": "tanh"},
])
def test_plain_cnn_bad_values(config):
    with pytest.raises(ValueError):
        build_model("plain_cnn", **config)


def correlated_images(count=64, seed=0):
    """Smooth, colour-correlated images plus noise: neighbouring pixels and channels correlate."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, 8, 8, generator=generator) * 200
    tint = torch.rand(count, 3, 1, 1, generator=generator) * 40
    smooth = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False) + tint
    noise = torch.rand(count, 3, 32, 32, generator=generator) * 40
    return (smooth + noise).clamp(0, 255).to(torch.uint8)


def channel_covariance(maps):
    flat = maps.permute(1, 0, 2, 3).reshape(maps.shape[1], -1)
    flat = flat - flat.mean(1, keepdim=True)
    return flat @ flat.T / flat.shape[1]


def test_whiten_stem_decorrelates():
    inputs = normalize(correlated_images())
    model = build_model("plain_cnn", widths=[8, 16], convs_per_stage=1, whiten_stem=True)

    init_whitening(model, inputs)
    with torch.inference_mode():
        outputs = model.stem(inputs)[:, :12]

    raw = torch.nn.functional.unfold(inputs, 2).transpose(1, 2).reshape(-1, 12)
    raw_correlation = torch.corrcoef(raw.T)
    covariance = channel_covariance(outputs)
    off_diagonal = covariance - torch.diag(torch.diag(covariance))
    # The input patches must start out strongly correlated, or the check below proves nothing.
    assert raw_correlation[0, 1] > 0.8
    # eps=5e-4 shrinks each variance to eigenvalue / (eigenvalue + eps), a little under 1.
    assert torch.allclose(torch.diag(covariance), torch.ones(12), atol=0.1)
    assert off_diagonal.abs().max() < 0.05


def test_whiten_stem_shape_and_frozen():
    model = build_model("plain_cnn", widths=[8, 16], convs_per_stage=1, whiten_stem=True)

    assert model.stem.out_channels == 24
    assert model.stem.kernel_size == (2, 2)
    assert not model.stem.weight.requires_grad


def test_whiten_stem_negated_halves():
    inputs = normalize(correlated_images(count=16))
    model = build_model("plain_cnn", widths=[8], convs_per_stage=1, whiten_stem=True)

    init_whitening(model, inputs)

    assert torch.equal(model.stem.weight[12:], -model.stem.weight[:12])


def test_init_whitening_skips_plain_stem():
    torch.manual_seed(0)
    model = build_model("plain_cnn", widths=[8], convs_per_stage=1, stem_width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    init_whitening(model, normalize(correlated_images(count=8)))

    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# Options of the plain CNN family


def test_plain_cnn_batchnorm_scale_frozen():
    model = build_model("plain_cnn", widths=[8, 16], convs_per_stage=2, stem_width=8, batchnorm_scale=False)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    assert norms
    assert all(not norm.weight.requires_grad and norm.bias.requires_grad for norm in norms)
    assert all(torch.all(norm.weight == 1) for norm in norms)


def test_plain_cnn_dirac_init_passes_input():
    torch.manual_seed(0)
    model = build_model("plain_cnn", widths=[8, 16], convs_per_stage=2, stem_width=8, dirac_init=True)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    inputs = torch.randn(2, 16, 6, 6)

    # Every conv after the stem widens or keeps its width, so each gets identity filters.
    for conv in convs[1:]:
        outputs = conv(inputs[:, :conv.in_channels])
        assert torch.allclose(outputs[:, :conv.in_channels], inputs[:, :conv.in_channels])
        # The remaining filters keep their random init.
        assert conv.out_channels == conv.in_channels or outputs[:, conv.in_channels:].abs().sum() > 0


def test_logit_scale_scales_output():
    inputs = torch.randn(3, 3, 32, 32)
    outputs = {}
    for scale in (1.0, 0.25):
        torch.manual_seed(0)
        model = build_model("plain_cnn", widths=[8, 16], convs_per_stage=1, stem_width=8, logit_scale=scale).eval()
        with torch.no_grad():
            outputs[scale] = model(inputs)

    assert torch.allclose(outputs[0.25], 0.25 * outputs[1.0], atol=1e-6)


@pytest.mark.parametrize("scale", [0, -1.0])
def test_logit_scale_must_be_positive(scale):
    with pytest.raises(ValueError) as error:
        build_model("plain_cnn", widths=[8], logit_scale=scale)

    assert "logit_scale" in str(error.value)


@pytest.mark.parametrize("option", ["whiten_stem", "batchnorm_scale", "dirac_init"])
def test_plain_cnn_quoted_bool_rejected(option):
    with pytest.raises(ValueError) as error:
        build_model("plain_cnn", widths=[8], **{option: "false"})

    assert option in str(error.value)


def test_option_of_other_model_rejected():
    with pytest.raises(ValueError) as error:
        build_model("mobilenet_v3_small", batchnorm_scale=False)

    assert "batchnorm_scale" in str(error.value)
    assert "cifar_stem" in str(error.value)
