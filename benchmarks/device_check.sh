#!/usr/bin/env bash
# The GPU check of visionfit, in one go, for a machine with one CUDA GPU and this repository:
# install, run the CUDA-marked tests, then train the fast recipe on CIFAR-10 and a 224-px photo
# folder on the GPU, printing each epoch's time and accuracy. Meant to finish within 8 minutes.
#
#   benchmarks/device_check.sh --prepare   # here: copy the data it needs into .device-data/
#   benchmarks/device_check.sh             # there (carry .device-data): the check itself
#   benchmarks/device_check.sh --dry-run   # the same steps on the CPU, tiny, to check the script
#
# Data: ../shared/data (the development archives) when it is beside the repository, else
# .device-data/ made by --prepare (the CIFAR-10 JPEG archive and a slice of the flower photos,
# small enough to travel with the repository), else the bundled CIFAR-10 sample and no photo run.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-check}"
python="${PYTHON:-python3}"
shared="../shared/data"
data=".device-data"
scratch="${TMPDIR:-/tmp}/visionfit-device-check"

section() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

prepare() {
    # A slice of the photos: 40 train and 10 val pictures a class (the whole archive is too big to travel).
    mkdir -p "$data"
    cp "$shared/cifar10-dev-jpeg.tar.gz" "$data/"
    local unpacked
    unpacked=$(mktemp -d)
    tar -xzf "$shared/flowers-dev.tar.gz" -C "$unpacked"
    rm -rf "$data/flowers"
    for split_count in train:40 val:10; do
        local split=${split_count%%:*} count=${split_count##*:}
        for folder in "$unpacked"/flowers-dev/"$split"/*/; do
            local target="$data/flowers/$split/$(basename "$folder")"
            mkdir -p "$target"
            find "$folder" -type f | sort | head -n "$count" | xargs -I{} cp {} "$target/"
        done
    done
    rm -rf "$unpacked"
    du -sh "$data"
}

unpack_data() {
    # Prints the CIFAR-10 folder and the photo folder it unpacked ("" for one it has not).
    mkdir -p "$scratch"
    local cifar="" photos=""
    local archive=""
    for candidate in "$shared/cifar10-dev-jpeg.tar.gz" "$data/cifar10-dev-jpeg.tar.gz"; do
        [ -f "$candidate" ] && archive="$candidate" && break
    done
    if [ -n "$archive" ]; then
        mkdir -p "$scratch/cifar10"
        [ -d "$scratch/cifar10/train" ] || tar -xzf "$archive" -C "$scratch/cifar10"
        cifar="$scratch/cifar10"
    fi
    if [ -d "$data/flowers/train" ]; then
        photos="$data/flowers"
    elif [ -f "$shared/flowers-dev.tar.gz" ]; then
        [ -d "$scratch/flowers-dev" ] || tar -xzf "$shared/flowers-dev.tar.gz" -C "$scratch"
        photos="$scratch/flowers-dev"
    fi
    echo "$cifar|$photos"
}

epochs_table() {
    # Each epoch of a run folder: seconds of training, images/s, test accuracy.
    "$python" - "$1" <<'EOF'
import json, sys
from pathlib import Path
for line in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    test = record["test"]
    accuracy = f"{test['accuracy']:.2%}" if test else "-"
    print(f"  epoch {record['epoch']:>3}  train {record['train_seconds']:6.1f} s  "
          f"{record['train_images_per_second']:9,.0f} img/s  test {record['test_seconds']:5.1f} s  acc {accuracy}")
EOF
}

run_train() {
    local name=$1
    shift
    local started=$SECONDS
    "$python" -m visionfit train "$@" --run-dir "$scratch/runs" --name "$name" --no-tensorboard --log-every 0
    echo "  whole command: $((SECONDS - started)) s"
    epochs_table "$scratch/runs/$name"
}

main() {
    local device=cuda cifar_epochs=10 photo_epochs=3 tests="-m cuda"
    if [ "$mode" = "--dry-run" ]; then
        device=cpu cifar_epochs=1 photo_epochs=1
        echo "dry run: the same steps on the CPU, one tiny epoch each"
    fi
    rm -rf "$scratch/runs"
    section "install"
    "$python" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -n 3 || true
    "$python" -c "import torch, visionfit; print('torch', torch.__version__, '| CUDA', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
    section "CUDA-marked tests"
    # shellcheck disable=SC2086
    "$python" -m pytest -q $tests tests/test_cuda.py -p no:cacheprovider
    local found cifar photos
    found=$(unpack_data)
    cifar=${found%%|*}
    photos=${found##*|}
    section "fast recipe on CIFAR-10 ($device)"
    if [ -n "$cifar" ] && [ "$mode" != "--dry-run" ]; then
        run_train fast --dataset folder --data-dir "$cifar" --recipe fast --epochs "$cifar_epochs" --device "$device"
    else
        run_train fast --dataset cifar10-sample --epochs "$cifar_epochs" --device "$device" --model-arg width=8
    fi
    section "224-px photo folder, resnet18 from scratch ($device)"
    if [ -n "$photos" ]; then
        local size=224 limit=()
        [ "$mode" = "--dry-run" ] && size=64 && limit=(--batch-size 16)
        run_train photos --dataset folder --data-dir "$photos" --model resnet18 --input-size "$size" \
            --epochs "$photo_epochs" --device "$device" --workers 8 "${limit[@]}"
    else
        echo "  no photo data here (run --prepare beside ../shared/data, and carry .device-data)"
    fi
    section "done"
}

case "$mode" in
    --prepare) prepare ;;
    check | --dry-run) main ;;
    *) echo "usage: $0 [--prepare | --dry-run]" >&2; exit 2 ;;
esac
