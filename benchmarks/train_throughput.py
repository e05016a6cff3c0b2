"""Training throughput: memgeo's loop vs a plain PyTorch loop, measured in the same run.

memgeo: its training loop as the presets run it: the whole subset as one uint8 tensor on the
device, normalisation and augmentation as batched tensor ops, channels_last, and the preset's
precision as resolved on this machine (the cpu preset: fp32; `--precision auto` decides as
memgeo does: bf16 only on a GPU or a CPU with native, measured-faster bf16). Baseline: a plain
float32 loop over the same model and optimizer fed by torchvision's DataLoader over PIL images
with ToTensor/Normalize (and RandomCrop/RandomHorizontalFlip with --augment) transforms,
contiguous memory format. When memgeo runs in bf16, its fp32 loop is timed too, to separate what
the data path gives from what bf16 gives. Prints images/s and the ratio memgeo / baseline last.

    python benchmarks/train_throughput.py [--preset cpu] [--width W] [--n 5000] [--epochs 5] [--augment]
                                          [--precision auto|fp32|bf16] [--device cpu|cuda]
"""
import argparse
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from memgeo.config import preset
from memgeo.data import load_data
from memgeo.models import build_model
from memgeo.precision import native_bf16_cpu
from memgeo.train import make_optimizer, train_one_epoch


class PILDataset(Dataset):
    def __init__(self, x_uint8, labels, transform):
        self.images = [Image.fromarray(img.transpose(1, 2, 0)) for img in x_uint8.numpy()]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def plain_epoch(model, opt, loader, device):
    model.train()
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="training images (balanced over classes)")
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per contender (interleaved)")
    ap.add_argument("--preset", default="cpu", help="model, width, optimizer, batch size and precision "
                    "come from this preset's main run unless given below")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for the baseline")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32"],
                    help="memgeo's precision (default: the preset's)")
    ap.add_argument("--unverified-local-copy", action="store_true", default=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    given = {k: v for k, v in (("model", args.model), ("width", args.width), ("precision", args.precision))
             if v is not None}
    cfg = replace(preset(args.preset).run, unverified_local_copy=args.unverified_local_copy,
                  train_per_class=args.n // 10, test_per_class=10, augment=args.augment, device=args.device,
                  **given).resolved()
    data = load_data(cfg, device="cpu")
    n = len(data.x_train)
    print(f"{cfg.model} width {cfg.width}, {n} images, batch {cfg.batch_size}, {cfg.optimizer}, "
          f"augment={cfg.augment}, device {device}, torch threads {torch.get_num_threads()}, "
          f"memgeo precision {cfg.precision} (CPU native bf16: {native_bf16_cpu()})")

    # Each contender is built once, warmed up for one epoch, then the contenders take turns, one
    # epoch each, for --epochs rounds: a slow spell of a shared machine hits all of them alike.
    # The medians of the per-epoch rates are compared.
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def memgeo_contender(c):
        data_dev = data.to(device)
        model = build_model(c).place(device)
        opt = make_optimizer(c, model)
        epoch = iter(range(1, 10 ** 6))
        return lambda: train_one_epoch(model, opt, data_dev, c, next(epoch), device)

    def baseline_contender():
        mean = data.mean.flatten().tolist()
        std = data.std.flatten().tolist()
        tf = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if args.augment else []
        tf = transforms.Compose(tf + [transforms.ToTensor(), transforms.Normalize(mean, std)])
        ds = PILDataset(data.x_train, data.train_label, tf)
        g = torch.Generator().manual_seed(0)
        loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=args.workers,
                            generator=g, pin_memory=device.type == "cuda")
        model = build_model(cfg).to(device)
        opt = make_optimizer(cfg, model)
        return lambda: plain_epoch(model, opt, loader, device)

    contenders = {"baseline": baseline_contender(), "memgeo": memgeo_contender(cfg)}
    if cfg.precision != "fp32":
        contenders["memgeo_fp32"] = memgeo_contender(replace(cfg, precision="fp32"))
    rates = {k: [] for k in contenders}
    for name, run_epoch in contenders.items():
        run_epoch()                                                      # warm-up
    for _ in range(args.epochs):
        for name, run_epoch in contenders.items():
            sync()
            t = time.perf_counter()
            run_epoch()
            sync()
            rates[name].append(n / (time.perf_counter() - t))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    spread = {k: f"{min(v):.0f}-{max(v):.0f}" for k, v in rates.items()}
    plain_ips, memgeo_ips = med["baseline"], med["memgeo"]
    print(f"median of {args.epochs} interleaved epochs each (range in brackets)")
    print(f"baseline (DataLoader + PIL transforms, fp32): {plain_ips:8.0f} images/s ({spread['baseline']})")
    if "memgeo_fp32" in med:
        print(f"memgeo in fp32 (uint8 on device, batched ops): {med['memgeo_fp32']:8.0f} images/s "
              f"({spread['memgeo_fp32']}; {med['memgeo_fp32'] / plain_ips:.2f}x the baseline)")
    print(f"memgeo as configured ({cfg.precision}):          {memgeo_ips:8.0f} images/s ({spread['memgeo']})")
    print(f"ratio memgeo / baseline: {memgeo_ips / plain_ips:.2f}x")


if __name__ == "__main__":
    main()
