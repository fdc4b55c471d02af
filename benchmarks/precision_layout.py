"""Training-step speed of a model under each precision and memory layout on this machine,
extrapolated to seconds per 45,000-image epoch (model compute only: no data loading).

    python benchmarks/precision_layout.py --model cifar10-quick --batch-size 64
    python benchmarks/precision_layout.py --model airnet --batch-size 512 --model-arg width=32

This is what `--precision auto` and `--channels-last auto` are decided from (see RESULTS.md).
"""

import argparse
import time

import torch

from visionfit.models import create_model


def seconds_per_epoch(model_name, model_args, batch_size, precision, channels_last, steps):
    torch.manual_seed(0)
    model = create_model(model_name, 10, **model_args)
    images, labels = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for step in range(steps + 3):  # 3 warm-up steps: oneDNN picks and caches its kernels
        if step == 3:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps / batch_size * 45000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar10-quick")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=INT")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    model_args = {key: int(value) for key, value in (item.split("=") for item in args.model_arg)}
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads; avx512_bf16 {torch.cpu._is_avx512_bf16_supported()}, "
        f"amx {torch.cpu._is_amx_tile_supported()}"
    )
    for precision in ("fp32", "bf16"):
        for channels_last in (False, True):
            seconds = seconds_per_epoch(
                args.model, model_args, args.batch_size, precision, channels_last, args.steps
            )
            layout = "channels_last" if channels_last else "NCHW"
            print(
                f"{args.model} batch {args.batch_size} {precision} {layout}: {seconds:.1f} s/epoch",
                flush=True,
            )


if __name__ == "__main__":
    main()
