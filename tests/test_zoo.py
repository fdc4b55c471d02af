"""The torchvision zoo through the registry: every classification model by name, generic heads,
freezing. Tiny inputs and a representative slice of architectures keep this fast."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights, list_models

from visionfit.errors import UserError
from visionfit.models import create_model, get_model_spec
from visionfit.models import list_models as registered_models
from visionfit.models.freezing import backbone_frozen, parameter_groups, set_backbone_frozen, split_parameters
from visionfit.models.heads import APPENDED_NAME, find_classifier

# One or two of each family: plain CNN, VGG (the tutorial's), residual, grouped/mobile, conv head
# (SqueezeNet), dense, NAS, RegNet, aux heads (GoogLeNet), ConvNeXt, transformer.
SLICE = {
    "resnet18": 32,
    "vgg11": 32,
    "squeezenet1_1": 48,
    "mobilenet_v3_small": 32,
    "efficientnet_b0": 32,
    "shufflenet_v2_x0_5": 32,
    "mnasnet0_5": 32,
    "regnet_x_400mf": 32,
    "googlenet": 32,
    "convnext_tiny": 32,
    "densenet121": 32,
}
VIT_ARGS = {"image_size": 32}  # vit_b_16 at 32x32: 4 patches instead of 196


def test_every_torchvision_classification_model_is_registered_with_its_preprocessing():
    names = {spec.name: spec for spec in registered_models()}
    torchvision_names = list_models(module=torchvision.models)
    assert len(torchvision_names) > 70
    for name in torchvision_names:
        spec = names[name]
        transforms = get_model_weights(name).DEFAULT.transforms()
        assert spec.family == "torchvision"
        assert spec.input_size == transforms.crop_size[0]
        assert round(spec.input_size / spec.crop_fraction) == transforms.resize_size[0]
        assert spec.mean == tuple(transforms.mean) and spec.interpolation == transforms.interpolation.value
        assert spec.pretrained_weights
    assert names["efficientnet_b0"].interpolation == "bicubic"
    assert names["inception_v3"].input_size == 299
    assert names["cifar10-quick"].pretrained_weights is None


def _step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(images), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


HEAVY = {"densenet121", "regnet_x_400mf", "convnext_tiny", "vit_b_16"}  # their append runs are slow


@pytest.mark.parametrize(
    ("name", "head"),
    [
        pytest.param(name, head, marks=[pytest.mark.slow] if name in HEAVY and head == "append" else [])
        for name in [*SLICE, "vit_b_16"]
        for head in ("replace", "append")
    ],
)
def test_heads_train_and_freezing_keeps_the_backbone(name: str, head: str):
    torch.manual_seed(0)
    args = VIT_ARGS if name == "vit_b_16" else {}
    side = 32 if name == "vit_b_16" else SLICE[name]
    model = create_model(name, 3, head=head, **args)
    images, targets = torch.randn(2, 3, side, side), torch.tensor([0, 2])

    model.train()
    output = model(images)
    assert output.shape == (2, 3)  # a plain tensor in training mode too (aux heads are dropped)
    head_name = find_classifier(model, 3)
    if head == "append":
        assert head_name.endswith(APPENDED_NAME) or head_name.endswith(".1")
        assert find_classifier(model, 1000)  # the 1000-way layer is still there, below the new one

    set_backbone_frozen(model, 3, True)
    head_params, backbone = split_parameters(model, 3)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    stats_before = [m.running_mean.clone() for m in norms]
    model.train()
    _step(model, images, targets)
    assert all(torch.equal(p, before[id(p)]) for p in backbone)
    assert any(not torch.equal(p, before[id(p)]) for p in head_params)
    assert all(not m.training for m in norms)  # frozen BatchNorm stayed in eval mode
    assert all(torch.equal(m.running_mean, s) for m, s in zip(norms, stats_before, strict=True))

    set_backbone_frozen(model, 3, False)
    model.train()
    _step(model, images, targets)
    assert any(not torch.equal(p, before[id(p)]) for p in backbone)
    assert all(m.training for m in norms)


def test_replace_is_the_tutorials_classifier_6_and_append_its_add_linear():
    replaced = create_model("vgg16", 10, head="replace")
    assert isinstance(replaced.classifier[6], nn.Linear)
    assert (replaced.classifier[6].in_features, replaced.classifier[6].out_features) == (4096, 10)
    appended = create_model("vgg16", 10, head="append")
    assert (appended.classifier[6].in_features, appended.classifier[6].out_features) == (4096, 1000)
    assert (appended.classifier.add_linear.in_features, appended.classifier.add_linear.out_features) == (
        1000,
        10,
    )
    squeeze = create_model("squeezenet1_1", 4, head="replace")
    assert squeeze.classifier[1].out_channels == 4  # SqueezeNet's head is a 1x1 convolution


def test_model_args_reach_torchvision_builders_and_bad_ones_are_one_line_errors():
    model = create_model("resnet18", 2, zero_init_residual=True)
    assert torch.count_nonzero(model.layer1[0].bn2.weight) == 0
    assert create_model("mobilenet_v3_small", 2, dropout=0.0).classifier[2].p == 0.0
    with pytest.raises(UserError, match="cannot build model resnet18"):
        create_model("resnet18", 2, widht=8)


def test_head_append_and_pretrained_are_refused_for_models_without_imagenet_weights():
    with pytest.raises(UserError, match="torchvision models"):
        create_model("cifar10-quick", 10, head="append")
    with pytest.raises(UserError, match="torchvision models"):
        create_model("cifar10-quick", 10, pretrained=True)


def test_backbone_frozen_follows_the_epoch():
    assert [backbone_frozen("backbone", 3, epoch) for epoch in (1, 2, 3, 4)] == [True, True, False, False]
    assert backbone_frozen("backbone", None, 99) and not backbone_frozen("none", None, 1)


def test_parameter_groups_put_the_head_first_at_full_lr():
    model = create_model("resnet18", 5)
    head, backbone = parameter_groups(model, 5, lr=0.1, backbone_lr_scale=0.01)
    assert [p.shape for p in head["params"]] == [(5, 512), (5,)] and head["lr"] == 0.1
    assert backbone["lr"] == pytest.approx(0.001)
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))


def test_unknown_torchvision_name_suggests_one():
    with pytest.raises(UserError, match="did you mean 'resnet18'"):
        get_model_spec("resnet19")
