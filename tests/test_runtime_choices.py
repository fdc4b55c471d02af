"""Precision and memory layout chosen per device, and the fast network."""

from __future__ import annotations

import platform

import pytest
import torch

import visionfit.runtime as runtime_module
from visionfit.errors import UserError
from visionfit.models import create_model
from visionfit.runtime import create_runtime


def test_auto_precision_follows_the_cpu_bf16_capability(monkeypatch):
    monkeypatch.setattr(runtime_module, "cpu_has_fast_bf16", lambda: False)
    assert create_runtime("cpu").precision == "fp32"
    monkeypatch.setattr(runtime_module, "cpu_has_fast_bf16", lambda: True)
    assert create_runtime("cpu").precision == "bf16"
    assert create_runtime("cpu", "fp32").precision == "fp32"  # an explicit choice wins


def test_cpu_bf16_detection_matches_torch():
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert runtime_module.cpu_has_fast_bf16() == expected


def test_channels_last_choice_and_layout():
    runtime = create_runtime("cpu", "fp32", "on")
    model = runtime.prepare_model(torch.nn.Conv2d(3, 4, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    images = runtime.to_device(torch.zeros(2, 3, 8, 8))
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert runtime.to_device(torch.zeros(2)).shape == (2,)  # labels untouched
    assert create_runtime("cpu", "fp32", "off").channels_last is False
    assert create_runtime("cpu").channels_last is True
    with pytest.raises(UserError, match="--channels-last must be"):
        create_runtime("cpu", "fp32", "sideways")


def test_airnet_shapes_width_and_a_few_steps_learn():
    model = create_model("airnet", 3, width=8)
    assert model(torch.zeros(4, 3, 32, 32)).shape == (4, 3)
    small = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in create_model("airnet", 3, width=16).parameters()) > 3 * small
    with pytest.raises(UserError, match="cannot build model airnet"):
        create_model("airnet", 3, width=0)
    torch.manual_seed(0)
    images, labels = torch.randn(32, 3, 32, 32), torch.arange(32) % 3
    images += labels.view(-1, 1, 1, 1).float()  # separable classes
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc's mallopt (Linux)")
def test_freed_blocks_are_reused_without_page_faults():
    import resource

    assert runtime_module.keep_freed_memory()

    def faults_while_allocating() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            block = torch.empty(64 * 1024**2, dtype=torch.uint8)
            block.fill_(1)  # touch every page
            del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_while_allocating()  # the heap grows to hold the block (its pages fault in once)
    faults_while_allocating()
    # 5 x 64 MiB would be about 80,000 faults if each block were a fresh mmap (glibc's default)
    assert faults_while_allocating() < 2000


def test_shift_test_time_augmentation_weighs_the_image_and_its_two_moved_copies():
    from visionfit.engine.loops import classify

    class PixelReader(torch.nn.Module):  # one logit: the value of pixel (4, 4) of channel 0
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return images[:, 0, 4, 4].reshape(-1, 1)

    images = torch.arange(300, dtype=torch.float32).reshape(1, 3, 10, 10)
    plain = classify(PixelReader(), images)
    shifted = classify(PixelReader(), images, shift=2)
    # the copy moved down-right shows pixel (2, 2) at (4, 4), the one moved up-left pixel (6, 6)
    expected = 0.5 * images[0, 0, 4, 4] + 0.25 * images[0, 0, 2, 2] + 0.25 * images[0, 0, 6, 6]
    assert float(plain) == float(images[0, 0, 4, 4]) and float(shifted) == pytest.approx(float(expected))
    flipped = classify(PixelReader(), images, flip=True, shift=2)
    pixel = images[0, 0]  # each view averaged with its mirror image, whose (4, 4) is the view's (4, 5)
    expected_flip = (
        0.5 * (pixel[4, 4] + pixel[4, 5]) / 2
        + 0.25 * (pixel[2, 2] + pixel[2, 3]) / 2
        + 0.25 * (pixel[6, 6] + pixel[6, 7]) / 2
    )
    assert float(flipped) == pytest.approx(float(expected_flip))
