"""Model registry: torchvision baselines, a CIFAR ResNet-18 and a family of small plain CNNs.

Every builder starts from random weights (`weights=None`) and returns 10-class logits for a
normalised (B, 3, 32, 32) input.
"""

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tv_models

from .data import NUM_CLASSES


def mobilenet_v3_small(cifar_stem=True, num_classes=NUM_CLASSES):
    model = tv_models.mobilenet_v3_small(weights=None, num_classes=num_classes)
    if cifar_stem:
        # The ImageNet stem halves 32x32 to 16x16 before any block; stride 1 keeps the detail.
        model.features[0][0].stride = (1, 1)
    return model


def shufflenet_v2_x1_0(cifar_stem=True, num_classes=NUM_CLASSES):
    model = tv_models.shufflenet_v2_x1_0(weights=None, num_classes=num_classes)
    if cifar_stem:
        # The ImageNet stem (stride-2 conv then stride-2 max-pool) divides 32x32 by 4.
        model.conv1[0].stride = (1, 1)
        model.maxpool = nn.Identity()
    return model


def resnet18_cifar(num_classes=NUM_CLASSES):
    model = tv_models.resnet18(weights=None, num_classes=num_classes)
    # The usual CIFAR adaptation: a 3x3 stride-1 stem and no max-pool, so stage 1 runs at 32x32.
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _activation(name):
    activations = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
    if name not in activations:
        raise ValueError(f"activation {name!r} is not supported; use one of {sorted(activations)}")
    return activations[name]()


def _conv_bn_act(in_channels, out_channels, activation, pool=False, batchnorm_scale=True, dirac_init=False):
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
    if dirac_init and out_channels >= in_channels:
        # The first filters start as identities, so at init each block passes its input through
        # and the early steps train a network that behaves like a shallower one.
        with torch.no_grad():
            nn.init.dirac_(conv.weight[:in_channels])
    layers = [conv]
    if pool:
        # Pooling straight after the stage's first conv makes every later conv of the stage 4x cheaper.
        layers.append(nn.MaxPool2d(2))
    norm = nn.BatchNorm2d(out_channels)
    if not batchnorm_scale:
        # A scale fixed at 1 makes the conv before it scale-invariant, so weight decay only sets
        # its effective learning rate; the shift (bias) still learns.
        norm.weight.requires_grad_(False)
    layers += [norm, _activation(activation)]
    return layers


class PlainCNN(nn.Module):
    """A few wide conv stages (conv, max-pool, BatchNorm, activation) and a linear head.

    No branches and few layers: at batch 1 latency is dominated by the number of kernels,
    so depth is kept small and capacity comes from width. With `whiten_stem`, the stem is a
    frozen 2x2 conv set by `init_whitening` to whiten image patches, which speeds up early training.
    """

    def __init__(self, widths=(64, 128, 256), convs_per_stage=2, stem_width=32, whiten_stem=False,
                 stem_stride=1, activation="gelu", batchnorm_scale=True, dirac_init=False, logit_scale=1.0,
                 num_classes=NUM_CLASSES):
        super().__init__()
        for name, value in (("whiten_stem", whiten_stem), ("batchnorm_scale", batchnorm_scale), ("dirac_init", dirac_init)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} is invalid: expected true or false (unquoted in YAML)")
        if not isinstance(logit_scale, (int, float)) or not logit_scale > 0:
            raise ValueError(f"logit_scale={logit_scale} is invalid; use a positive factor (1 leaves the logits unchanged)")
        if not widths or convs_per_stage < 1:
            raise ValueError(f"widths={widths} and convs_per_stage={convs_per_stage}: need at least one stage of one conv")
        if whiten_stem:
            # 12 whitened directions of a 2x2x3 patch and their negatives: 24 channels.
            stem_width = 24
            # Without a trainable bias nothing before the first stage learns, so autograd skips
            # the gradient of the costliest full-resolution input.
            # With stride 2 the 2x2 patches tile the image: no pixel is lost, and every later
            # layer runs at 16x16, where the same FLOPs buy 4x the channels.
            self.stem = nn.Conv2d(3, stem_width, kernel_size=2, stride=stem_stride, padding=0, bias=False)
            self.stem.requires_grad_(False)
            layers = [self.stem, _activation(activation)]
        else:
            if stem_stride != 1:
                raise ValueError(f"stem_stride={stem_stride} needs whiten_stem: true; the 3x3 stem has stride 1")
            layers = _conv_bn_act(3, stem_width, activation, batchnorm_scale=batchnorm_scale)
        in_channels = stem_width
        block = {"batchnorm_scale": batchnorm_scale, "dirac_init": dirac_init}
        for width in widths:
            layers += _conv_bn_act(in_channels, width, activation, pool=True, **block)
            for _ in range(convs_per_stage - 1):
                layers += _conv_bn_act(width, width, activation, **block)
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes, bias=False)
        # Scaling the logits down acts as a temperature: it keeps early softmax outputs soft.
        self.logit_scale = float(logit_scale)

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        logits = self.classifier(x)
        return logits * self.logit_scale if self.logit_scale != 1.0 else logits


@torch.no_grad()
def init_whitening(model, inputs, eps=5e-4):
    """Set a whitening stem from normalised training `inputs` (N, 3, 32, 32): PCA of 2x2 patches."""
    conv = getattr(model, "stem", None)
    if conv is None:
        return model
    size = conv.kernel_size
    patches = F.unfold(inputs.float(), size, stride=conv.stride).transpose(1, 2).reshape(-1, 3 * size[0] * size[1])
    patches = patches - patches.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    directions = eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]
    weight = torch.cat([directions, -directions]).view_as(conv.weight)
    conv.weight.copy_(weight.to(conv.weight))
    return model


MODELS = {
    "mobilenet_v3_small": mobilenet_v3_small,
    "shufflenet_v2_x1_0": shufflenet_v2_x1_0,
    "resnet18_cifar": resnet18_cifar,
    "plain_cnn": PlainCNN,
}


def build_model(name, **config):
    """Build a registered model with random weights; `config` goes to its builder."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(MODELS)} "
                         f"(a params entry with another name sets one with `arch:`)")
    accepted = sorted(inspect.signature(MODELS[name]).parameters)
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ValueError(f"config option(s) {unknown} do not apply to model {name!r}; its options are {accepted}")
    try:
        return MODELS[name](**config)
    except TypeError as error:
        raise ValueError(f"invalid config {config} for model {name!r}: {error}") from error


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def weight_size_bytes(model):
    """Bytes of every tensor in the state dict (parameters and BatchNorm buffers), as saved."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
