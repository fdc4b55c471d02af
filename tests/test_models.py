import pytest
import torch
from torch import nn

from visionfit.errors import UserError
from visionfit.models import create_model, get_model_spec, list_models, register_model
from visionfit.models.registry import count_parameters


def test_cifar10_quick_is_the_tutorials_network_layer_for_layer():
    model = create_model("cifar10-quick", num_classes=10)
    layers = list(model.children())
    assert [type(layer) for layer in layers] == [
        nn.Conv2d,
        nn.MaxPool2d,
        nn.Conv2d,
        nn.MaxPool2d,
        nn.Conv2d,
        nn.MaxPool2d,
        nn.Flatten,
        nn.Linear,
        nn.Linear,
    ]
    convolutions = [layer for layer in layers if isinstance(layer, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convolutions] == [
        (3, 32, (5, 5), (2, 2)),
        (32, 32, (5, 5), (2, 2)),
        (32, 64, (5, 5), (2, 2)),
    ]
    linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(1024, 64), (64, 10)]
    assert count_parameters("cifar10-quick") == sum(p.numel() for p in model.parameters()) == 145_578


def test_output_has_one_logit_per_class():
    model = create_model("cifar10-quick", num_classes=3)
    assert model(torch.zeros(5, 3, 32, 32)).shape == (5, 3)


def test_builder_arguments_pass_through_and_unknown_ones_are_refused():
    assert create_model("cifar10-quick", 10, width=8)[0].out_channels == 8
    with pytest.raises(UserError, match="takes no argument 'widht'.*did you mean 'width'"):
        create_model("cifar10-quick", 10, widht=8)
    with pytest.raises(UserError, match="cannot build model cifar10-quick"):
        create_model("cifar10-quick", 10, width=0)


def test_unknown_model_suggests_a_close_name():
    with pytest.raises(UserError, match="unknown model 'cifar10-quik'.*did you mean 'cifar10-quick'"):
        get_model_spec("cifar10-quik")


def test_registry_refuses_duplicate_names():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("cifar10-quick", description="", input_size=32, mean=(0, 0, 0), std=(1, 1, 1))(
            lambda num_classes: nn.Identity()
        )


def test_listing_includes_the_tutorial_network_with_its_input():
    spec = {spec.name: spec for spec in list_models()}["cifar10-quick"]
    assert spec.input_size == 32 and len(spec.mean) == 3
