"""The PyTorch tutorial's CIFAR-10 train.py, rewritten faithfully as the baseline visionfit is
measured against: the same network, ToTensor only, DataLoader(batch_size=64) without shuffling,
CrossEntropyLoss, SGD(lr=0.01), a loss line every 100 steps, TensorBoard scalars, a test pass
after every epoch and `torch.save` of the whole model every epoch.

The one change: torchvision.datasets.CIFAR10 refuses copies that are not byte-identical to the
official files (md5), so the batches are read here with the same steps torchvision takes
(pickle → uint8 rows → HWC → PIL image → ToTensor).

    python benchmarks/tutorial_baseline.py --data-dir ~/.cache/visionfit-dev/cifar10/cifar-10-batches-py
"""

import argparse
import json
import os
import pickle
import tempfile
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter

PROCESS_START = time.time()


class CifarBatches(Dataset):
    """torchvision.datasets.CIFAR10's reading and __getitem__, without its md5 check."""

    def __init__(self, folder, train, transform):
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        data, targets = [], []
        for name in names:
            with open(os.path.join(folder, name), "rb") as file:
                entry = pickle.load(file, encoding="latin1")
            data.append(entry["data"])
            targets.extend(entry["labels"])
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self.targets = targets
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img, target = self.data[index], self.targets[index]
        img = Image.fromarray(img)
        return self.transform(img), target


class Tudui(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(3, 32, 5, 1, 2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, 1, 2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, 1, 2),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.model(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="a cifar-10-batches-py folder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="where logs and the per-epoch saves go")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    out = args.out or tempfile.mkdtemp(prefix="tutorial-baseline-")
    os.makedirs(out, exist_ok=True)

    to_tensor = torchvision.transforms.ToTensor()
    train_data = CifarBatches(args.data_dir, True, to_tensor)
    test_data = CifarBatches(args.data_dir, False, to_tensor)
    test_data_size = len(test_data)
    print(f"train: {len(train_data)}, test: {test_data_size}")
    train_dataloader = DataLoader(train_data, batch_size=64)
    test_dataloader = DataLoader(test_data, batch_size=64)

    tudui = Tudui()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(tudui.parameters(), lr=0.01)
    writer = SummaryWriter(os.path.join(out, "logs"))
    total_train_step = 0
    epochs = []
    for i in range(args.epochs):
        print(f"-------epoch {i + 1}-------")
        epoch_start = time.time()
        tudui.train()
        for imgs, targets in train_dataloader:
            outputs = tudui(imgs)
            loss = loss_fn(outputs, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_train_step += 1
            if total_train_step % 100 == 0:
                print(f"step {total_train_step}, loss {loss.item()}")
                writer.add_scalar("train_loss", loss.item(), total_train_step)
        train_seconds = time.time() - epoch_start

        tudui.eval()
        total_test_loss = 0.0
        total_accuracy = 0
        with torch.no_grad():
            for imgs, targets in test_dataloader:
                outputs = tudui(imgs)
                total_test_loss += loss_fn(outputs, targets).item()
                total_accuracy += (outputs.argmax(1) == targets).sum().item()
        accuracy = total_accuracy / test_data_size
        print(f"test loss (sum of batch means) {total_test_loss}, test accuracy {accuracy}")
        writer.add_scalar("test_loss", total_test_loss, i + 1)
        writer.add_scalar("test_accuracy", accuracy, i + 1)
        torch.save(tudui, os.path.join(out, f"tudui_{i}.pth"))
        epochs.append(
            {
                "epoch": i + 1,
                "accuracy": accuracy,
                "train_seconds": train_seconds,
                "wall_seconds": time.time() - PROCESS_START,
            }
        )
    writer.close()
    print("RESULT " + json.dumps({"epochs": epochs}))


if __name__ == "__main__":
    main()
