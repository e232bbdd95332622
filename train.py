"""
Train an autoencoder, then measure what its features are worth.

    python train.py --model dae --dataset fashion-mnist
    python train.py --model mae --dataset mnist --eval linear,knn,finetune

Three stages, each printed as it runs:
1. data: the whole split is loaded once into a uint8 tensor on the device; a batch is a slice of a
   shuffled index (for 28x28 and 32x32 images a per-sample DataLoader costs more than the model).
2. pretraining: the model's own loss (reconstruct, denoise, fill in); one line per epoch, and
   ckpt.pt + log.jsonl written after every epoch so a run can be stopped and resumed.
3. downstream evaluation (--eval): linear probe and k-NN on frozen features, fine-tuning.

Writes ckpt.pt, log.jsonl and results.json to --out-dir (default out/<model>-<dataset>).
"""
import argparse
import dataclasses
import gzip
import json
import math
import os
import shutil
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import metrics
from ae import AE, AEConfig
from dae import DAE, DAEConfig
from mae import MAE, MAEConfig
from mcae import MCAE, MCAEConfig, hidden_psnr
from vae import VAE, VAEConfig

# the one table from model name to (class, config); everything else goes through the model contract
MODELS = {
    "ae": (AE, AEConfig),
    "dae": (DAE, DAEConfig),
    "vae": (VAE, VAEConfig),
    "mcae": (MCAE, MCAEConfig),
    "mae": (MAE, MAEConfig),
}

# -----------------------------------------------------------------------------
# data

DIGITS = [str(i) for i in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# name -> (torchvision class name, channels, size, class names, colour jitter, folder under --data-dir)
DATASETS = {
    "mnist": ("MNIST", 1, 28, DIGITS, False, "MNIST/raw"),
    "fashion-mnist": ("FashionMNIST", 1, 28, FASHION, False, "FashionMNIST/raw"),
    "cifar10": ("CIFAR10", 3, 32, CIFAR, False, "cifar-10-batches-py"),
    "cifar10-jitter": ("CIFAR10", 3, 32, CIFAR, True, "cifar-10-batches-py"),
}
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist


class RunError(Exception):
    """Something the user can fix (a missing dataset, a damaged checkpoint, a run directory already in
    use): reported in one line, no stack trace. Stack traces are for bugs."""


def copy_debian_fashion_mnist(data_dir):
    """Unpack Debian's gzipped Fashion-MNIST where torchvision looks for it, if it is installed."""
    raw = os.path.join(data_dir, "FashionMNIST", "raw")
    if not os.path.isdir(DEBIAN_FASHION_MNIST):
        return
    for name in os.listdir(DEBIAN_FASHION_MNIST):
        target = os.path.join(raw, name.removesuffix(".gz"))
        if name.endswith("-ubyte.gz") and not os.path.exists(target):
            os.makedirs(raw, exist_ok=True)
            with gzip.open(os.path.join(DEBIAN_FASHION_MNIST, name)) as src, open(target + ".tmp", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(target + ".tmp", target)


def load_split(dataset, data_dir, train):
    """Images (N, C, H, W) uint8 and labels (N,) int64 of one split, through torchvision."""
    import torchvision  # imported here so that importing train.py for its helpers stays light

    class_name, channels, size, _, _, folder = DATASETS[dataset]
    if dataset == "fashion-mnist":
        copy_debian_fashion_mnist(data_dir)
    cls = getattr(torchvision.datasets, class_name)
    try:
        ds = cls(data_dir, train=train)
    except RuntimeError:  # files missing: try to download them once
        try:
            ds = cls(data_dir, train=train, download=True)
        except Exception:
            hint = " (or: apt-get install dataset-fashion-mnist)" if dataset == "fashion-mnist" else ""
            raise RunError(f"{dataset} is not in {os.path.abspath(data_dir)} and could not be downloaded "
                           f"(offline?). Put torchvision's files in "
                           f"{os.path.join(os.path.abspath(data_dir), folder)}/ or pass --data-dir{hint}.") from None
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)  # (N, C, H, W)
    assert images.shape[1:] == (channels, size, size), images.shape
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def to_float(images_uint8):
    return images_uint8.float().div_(255)


def color_jitter(x, generator=None):
    """Colour jitter drawn independently for each image of a (B, 3, H, W) batch in [0, 1].

    Brightness, contrast and saturation factors in [0.5, 1.5], hue shift in [-0.1, 0.1] of a turn,
    as torchvision's ColorJitter(0.5, 0.5, 0.5, 0.1) but vectorised over the batch on the device.
    The hue shift is a rotation of the colour plane of YIQ space, which turns hues the way an HSV
    shift does without leaving the device or looping over images.
    """
    B = x.shape[0]
    u = torch.rand(B, 4, 1, 1, generator=generator, device=x.device)  # one draw per image and factor
    brightness, contrast, saturation = 0.5 + u[:, 0:1], 0.5 + u[:, 1:2], 0.5 + u[:, 2:3]
    hue = (u[:, 3:4] - 0.5) * 0.2
    gray_weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)

    x = (x * brightness).clamp(0, 1)
    gray_mean = (x * gray_weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = (contrast * x + (1 - contrast) * gray_mean).clamp(0, 1)
    gray = (x * gray_weights).sum(1, keepdim=True)  # (B, 1, H, W)
    x = (saturation * x + (1 - saturation) * gray).clamp(0, 1)

    rgb_to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                              device=x.device)
    yiq = torch.einsum("ij,bjhw->bihw", rgb_to_yiq, x)
    angle = 2 * math.pi * hue.view(B)
    cos, sin = angle.cos().view(B, 1, 1), angle.sin().view(B, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(rgb_to_yiq), yiq).clamp(0, 1)


def random_shift_flip(x, max_shift=2, flip=True):
    """Each image of a (B, C, H, W) batch moved by up to max_shift pixels each way (zeros fill in)
    and, if flip, mirrored left-right with probability 1/2: the light end of the augmentation that
    ViT fine-tuning recipes use against memorising small datasets (--augment shift-flip)."""
    B, C, H, W = x.shape
    padded = F.pad(x, (max_shift,) * 4)  # (B, C, H + 2s, W + 2s)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, B, 1), device=x.device)  # top-left corner per image
    rows = torch.arange(H, device=x.device) + offsets[0]  # (B, H): the padded rows each image keeps
    cols = torch.arange(W, device=x.device) + offsets[1]  # (B, W)
    if flip:  # reading the columns backwards mirrors the image
        cols = torch.where(torch.rand(B, 1, device=x.device) < 0.5, cols.flip(1), cols)
    batch = torch.arange(B, device=x.device).view(B, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(B, H, 1), cols.view(B, 1, W)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


@dataclasses.dataclass
class Data:
    train_x: torch.Tensor   # (N, C, H, W) uint8 on the device
    train_y: torch.Tensor   # (N,) int64
    test_x: torch.Tensor    # (M, C, H, W) uint8; for cifar10-jitter already jittered, fixed by the seed
    test_y: torch.Tensor
    jitter: bool            # apply fresh colour jitter to every training batch
    classes: list           # class names, for figures

    def train_batch(self, idx):
        x = to_float(self.train_x[idx])
        return color_jitter(x) if self.jitter else x


def load_data(dataset, data_dir, device, train_size=0, seed=0):
    _, _, _, classes, jitter, _ = DATASETS[dataset]
    train_x, train_y = load_split(dataset, data_dir, train=True)
    test_x, test_y = load_split(dataset, data_dir, train=False)
    if train_size:
        train_x, train_y = train_x[:train_size], train_y[:train_size]
    train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
    if jitter:  # the test set is jittered once, by a generator of its own, so evaluation repeats
        g = torch.Generator(device=device).manual_seed(seed)
        jittered = [color_jitter(to_float(test_x[i:i + 1000]), g) for i in range(0, len(test_x), 1000)]
        test_x = (torch.cat(jittered) * 255).round().to(torch.uint8)
    return Data(train_x, train_y, test_x, test_y, jitter, classes)


def batches(n, batch_size):
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))


# -----------------------------------------------------------------------------
# model, optimiser, checkpoints


def build_config(model_name, args, in_channels, image_size):
    """The model's config: dataclass defaults, overridden by every flag of the same name that was given."""
    _, config_cls = MODELS[model_name]
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
             if getattr(args, f.name, None) is not None}
    return config_cls(**{**given, "in_channels": in_channels, "image_size": image_size})


def autocast(device, precision="auto"):
    """bf16 autocast for --precision bf16, and for auto on CUDA (tensor cores); plain float32 otherwise.

    On a CPU with bf16 instructions (avx512_bf16, AMX) bf16 is worth asking for: the MAE's fine-tuning
    step ran 1.3x faster on one such core.
    """
    device_type = torch.device(device).type
    enabled = precision == "bf16" or (precision == "auto" and device_type == "cuda")
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)


def lr_at(step, total_steps, warmup_steps, base_lr, schedule):
    """Linear warm-up, then cosine decay to zero (or constant). A function of the step alone, so a
    resumed run needs no scheduler state."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return base_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


def save_atomic(obj, path):
    """Write to a temporary file, then rename: an interrupted save (or a full disk) never leaves a
    broken file, and the previous checkpoint stays until the new one is complete."""
    try:
        torch.save(obj, path + ".tmp")
    except BaseException:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        raise
    os.replace(path + ".tmp", path)


CHECKPOINT_KEYS = {"model", "optimizer", "epoch", "model_name", "config", "args"}


def load_checkpoint(path, model_name=None):
    if not os.path.exists(path):
        raise RunError(f"no checkpoint at {path}: train first, or drop --resume")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, random bytes, another program's file: whatever torch.load says
        ckpt = e
    if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= set(ckpt):
        raise RunError(f"{path} is damaged or not a nanoAE checkpoint; start over with --overwrite "
                       f"or use another --out-dir")
    if model_name is not None and ckpt["model_name"] != model_name:
        raise RunError(f"{path} holds a {ckpt['model_name']} model, not {model_name}: "
                       f"use another --out-dir or --model {ckpt['model_name']}")
    return ckpt


def load_run(run_dir, device="cpu"):
    """(model in eval mode, args dict, checkpoint) of a finished or interrupted run, for analysis."""
    ckpt = load_checkpoint(os.path.join(run_dir, "ckpt.pt"))
    model_cls, config_cls = MODELS[ckpt["model_name"]]
    model = model_cls(config_cls(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt["args"], ckpt


# -----------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model, data, args):
    """Test loss and reconstruction quality. Noise and masks are drawn from a fixed seed, so two
    evaluations of the same weights give the same numbers."""
    model.eval()
    sums, n = {}, 0
    with torch.random.fork_rng(devices=[data.test_x.device] if data.test_x.is_cuda else []):
        torch.manual_seed(args.seed)
        for s in batches(len(data.test_x), args.batch_size):
            x = to_float(data.test_x[s])
            with autocast(args.device, args.precision):
                loss, out = model(x)
            recon = out["recon"].float()
            per_image = {
                "test_loss": loss.float().expand(len(x)),
                "mse": metrics.mse(recon, x), "mae": metrics.mae(recon, x),
                "psnr": metrics.psnr(recon, x), "ssim": metrics.ssim(recon, x),
                "psnr_input": metrics.psnr(out["input"].float(), x),  # the corrupted input, as a baseline
                # how much the reconstructions differ from image to image: ~0 when the model gives the
                # same picture (all black, the mean image) whatever it is shown
                "recon_spread": recon.flatten(1).std(dim=0, correction=0).mean().expand(len(x)),
            }
            for key in ("kl", "recon_loss"):
                if key in out:
                    per_image[key] = out[key].float().expand(len(x))
            if "mask" in out and out["mask"].any():  # masked models: how well the hidden pixels were filled
                psnr_hidden = hidden_psnr(recon, x, out["mask"])  # NaN for an image with nothing hidden
                per_image["psnr_hidden"] = psnr_hidden.nan_to_num(psnr_hidden.nanmean().item())
            for key, value in per_image.items():
                sums[key] = sums.get(key, 0.0) + value.sum().item()
            n += len(x)
    model.train()
    return {key: total / n for key, total in sums.items()}


@torch.no_grad()
def extract_features(model, images, batch_size, device):
    """(N, D) features of clean images from model.encode, computed once and reused by every probe."""
    model.eval()
    features = []
    for s in batches(len(images), batch_size):
        with autocast(device):
            features.append(model.encode(to_float(images[s])).float())
    model.train()
    return torch.cat(features)


def train_classifier(param_groups, forward, inputs, labels, epochs, batch_size, weight_decay, log_prefix,
                     warmup_epochs=0, label_smoothing=0.0):
    """Minimise cross-entropy of forward(inputs[idx]) with AdamW, linear warm-up and a cosine schedule.

    param_groups: dicts with 'params' and 'lr' (and optionally 'weight_decay'), one lr per group.
    """
    for group in param_groups:
        group["base_lr"] = group["lr"]
    optimizer = torch.optim.AdamW(param_groups, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(inputs) / batch_size)
    total = epochs * steps_per_epoch
    warmup = warmup_epochs * steps_per_epoch
    for epoch in range(epochs):
        perm = torch.randperm(len(inputs), device=inputs.device)
        t0 = last_print = time.time()
        total_loss = 0.0
        for i, s in enumerate(batches(len(inputs), batch_size)):
            scale = lr_at(epoch * steps_per_epoch + i, total, warmup, 1.0, "cosine")
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * scale
            idx = perm[s]
            if len(idx) < 2:  # BatchNorm in a head cannot train on a batch of one
                continue
            loss = F.cross_entropy(forward(inputs[idx]), labels[idx], label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            if log_prefix and time.time() - last_print > 30:  # a line now and then during long epochs
                print(f"  {log_prefix} step {i + 1}/{steps_per_epoch} | loss {loss.item():.4f}", flush=True)
                last_print = time.time()
        if log_prefix:
            print(f"{log_prefix} epoch {epoch + 1}/{epochs} | loss {total_loss / steps_per_epoch:.4f} "
                  f"| {time.time() - t0:.1f}s")


def linear_probe(train_features, train_labels, test_features, test_labels, num_classes, epochs=100):
    """Accuracy of a linear classifier on frozen, standardised features."""
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    train_features, test_features = (train_features - mean) / std, (test_features - mean) / std
    head = nn.Linear(train_features.shape[1], num_classes).to(train_features.device)
    with torch.enable_grad():
        train_classifier([{"params": head.parameters(), "lr": 1e-3}], head, train_features, train_labels,
                         epochs, 1024, 1e-4, log_prefix="")
    with torch.no_grad():
        return (head(test_features).argmax(1) == test_labels).float().mean().item()


def make_head(kind, dim, num_classes):
    if kind == "linear":
        return nn.Linear(dim, num_classes)
    # the DAE-vs-MAE study's DAE head: three linear layers with normalisation, ReLU and dropout between them
    return nn.Sequential(nn.Linear(dim, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(128, num_classes))


class Classifier(nn.Module):
    """The pretrained encoder (model.encode) with a classification head on its features."""

    def __init__(self, model, head):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x):
        return self.head(self.model.encode(x))


def finetune(model, data, args, num_classes):
    """Train encoder and head together on labels; the encoder gets its own (usually lower) lr."""
    dim = extract_features(model, data.test_x[:2], 2, args.device).shape[1]
    clf = Classifier(model, make_head(args.head, dim, num_classes)).to(args.device)
    encoder_lr = args.finetune_lr if args.finetune_lr is not None else args.head_lr
    if hasattr(model, "param_groups_lrd") and args.layer_decay < 1:
        # layer-wise lr decay: blocks near the input keep more of their pretrained weights
        groups = model.param_groups_lrd(encoder_lr, args.weight_decay, args.layer_decay)
    else:
        groups = [{"params": model.parameters(), "lr": encoder_lr}]  # the decoder gets no gradient: untouched
    groups.append({"params": clf.head.parameters(), "lr": args.head_lr})

    flip = data.classes != DIGITS  # a mirrored 2 is no longer a 2; a mirrored shoe is still a shoe

    def forward(idx_images):
        x = to_float(idx_images)
        if data.jitter:
            x = color_jitter(x)
        if args.augment == "shift-flip":
            x = random_shift_flip(x, flip=flip)
        with autocast(args.device, args.precision):
            return clf(x).float()

    clf.train()
    # one warm-up epoch: the new head's first, large gradients would otherwise shake the pretrained blocks
    train_classifier(groups, forward, data.train_x, data.train_y, args.finetune_epochs,
                     args.batch_size, args.weight_decay, log_prefix="finetune",
                     warmup_epochs=1 if args.finetune_epochs > 1 else 0, label_smoothing=args.label_smoothing)
    clf.eval()
    correct = 0
    with torch.no_grad():
        for s in batches(len(data.test_x), args.batch_size):
            with autocast(args.device, args.precision):
                correct += (clf(to_float(data.test_x[s])).argmax(1) == data.test_y[s]).sum().item()
    return correct / len(data.test_x)


def downstream(model, data, args):
    """Each protocol asked for in --eval; features are encoded once and shared by linear and knn."""
    protocols = [p for p in args.eval.split(",") if p]
    num_classes = len(data.classes)
    results = {}
    if {"linear", "knn"} & set(protocols):
        t0 = time.time()
        train_f = extract_features(model, data.train_x, args.batch_size, args.device)
        test_f = extract_features(model, data.test_x, args.batch_size, args.device)
        print(f"features: {tuple(train_f.shape)} train, {tuple(test_f.shape)} test in {time.time() - t0:.1f}s")
        if "linear" in protocols:
            results["linear_acc"] = linear_probe(train_f, data.train_y, test_f, data.test_y, num_classes)
            print(f"linear probe accuracy {results['linear_acc']:.4f}")
        if "knn" in protocols:
            results["knn_acc"] = metrics.knn_accuracy(train_f, data.train_y, test_f, data.test_y, k=20,
                                                      num_classes=num_classes)
            print(f"k-NN (k=20, cosine) accuracy {results['knn_acc']:.4f}")
    if "finetune" in protocols:
        # fine-tune a copy, so ckpt.pt keeps the pretrained weights the figures are drawn from
        copy = MODELS[args.model][0](model.config).to(args.device)
        copy.load_state_dict(model.state_dict())
        results["finetune_acc"] = finetune(copy, data, args, num_classes)
        print(f"fine-tune accuracy {results['finetune_acc']:.4f}")
    return results


# -----------------------------------------------------------------------------
# pretraining


def format_seconds(s):
    return f"{s / 60:.1f}m" if s >= 90 else f"{s:.0f}s"


def pretrain(model, data, args, optimizer, start_epoch, log_path):
    forward = torch.compile(model) if args.compile else model  # same weights, fused kernels
    n = len(data.train_x)
    steps_per_epoch = math.ceil(n / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = args.warmup_epochs * steps_per_epoch
    for epoch in range(start_epoch, args.epochs):
        # everything random in an epoch (order, noise, masks) follows from (seed, epoch): a run
        # resumed after epoch k repeats exactly what the uninterrupted run did
        torch.manual_seed(args.seed * 1000 + epoch)
        if hasattr(model, "start_epoch"):
            model.start_epoch(epoch)
        model.train()
        perm = torch.randperm(n, device=data.train_x.device)
        t0 = last_print = time.time()
        sums = {}
        for i, s in enumerate(batches(n, args.batch_size)):
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup_steps, args.lr, args.schedule)
            with autocast(args.device, args.precision):
                loss, out = forward(data.train_batch(perm[s]))
            if not torch.isfinite(loss):
                kept = f"ckpt.pt keeps epoch {epoch}" if epoch > 0 else "nothing was saved"
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; {kept}. "
                                         f"Try a lower --lr (now {args.lr}).")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in [("train_loss", loss), ("kl", out.get("kl")), ("recon_loss", out.get("recon_loss"))]:
                if value is not None:
                    sums[key] = sums.get(key, 0.0) + value.detach().float()
            now = time.time()
            if now - last_print > 15 or (epoch == start_epoch and i == 19):
                done = i + 1
                rate = done * args.batch_size / (now - t0)
                eta = (total_steps - step - 1) * args.batch_size / rate
                print(f"  step {done}/{steps_per_epoch} | loss {loss.item():.4f} | {rate:.0f} img/s "
                      f"| run eta {format_seconds(eta)}", flush=True)
                last_print = now
        train_stats = {key: (value / steps_per_epoch).item() for key, value in sums.items()}
        seconds = time.time() - t0
        test_stats = evaluate(model, data, args)
        entry = {"epoch": epoch + 1, "train_loss": train_stats["train_loss"], "test_loss": test_stats["test_loss"],
                 "psnr": test_stats["psnr"], "ssim": test_stats["ssim"], "seconds": seconds}
        for key in ("kl", "recon_loss"):
            if key in train_stats:
                entry[key] = train_stats[key]
                entry["test_" + key] = test_stats[key]
        extra = "".join(f" | {key} {entry[key]:.2f}" for key in ("kl", "recon_loss") if key in entry)
        print(f"epoch {epoch + 1}/{args.epochs} | train {entry['train_loss']:.4f} | test {entry['test_loss']:.4f}"
              f"{extra} | psnr {entry['psnr']:.2f} dB | ssim {entry['ssim']:.3f} | {n / seconds:.0f} img/s "
              f"| {seconds:.1f}s | eta {format_seconds(seconds * (args.epochs - epoch - 1))}", flush=True)
        warning = dead_run_warning(test_stats)
        if warning:
            print(warning, flush=True)
        with open(log_path, "a") as f:  # log first: a crash before the checkpoint leaves a line to trim
            f.write(json.dumps(entry) + "\n")
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                     "model_name": args.model, "config": dataclasses.asdict(model.config), "args": vars(args)},
                    os.path.join(args.out_dir, "ckpt.pt"))


def dead_run_warning(stats):
    """One line when a model outputs about the same image for every input (a dead run: a saturated
    sigmoid, dead ReLUs, a diverged lr), whose figures would otherwise look like results; else None."""
    if stats.get("recon_spread", 1.0) < 0.01:
        return (f"warning: the reconstructions hardly differ between images (spread {stats['recon_spread']:.4f}, "
                f"PSNR {stats['psnr']:.2f} dB): the model outputs about the same image for every input and "
                f"has not learned; try a lower --lr or more epochs")
    return None


def read_log(log_path, up_to_epoch):
    """Log entries of the epochs a checkpoint holds (a crash between log and checkpoint leaves extra)."""
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    return [e for e in entries if e["epoch"] <= up_to_epoch]


# -----------------------------------------------------------------------------
# command line


def bounded(kind, low, high=math.inf, low_open=False, high_open=False):
    """An argparse type: kind(text) in the range low..high, else argparse's one-line error naming the flag."""
    if high == math.inf:
        allowed = f"> {low}" if low_open else f">= {low}"
    else:
        allowed = ("in (" if low_open else "in [") + f"{low}, {high}" + (")" if high_open else "]")

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {allowed}")
        return value
    return parse


positive_int = bounded(int, 1)
count = bounded(int, 0)                                  # epochs, sizes: 0 allowed
positive = bounded(float, 0, low_open=True)              # learning rates
non_negative = bounded(float, 0)                         # noise, weight decay, loss weights
fraction = bounded(float, 0, 1, high_open=True)          # mask ratio, label smoothing


def int_tuple(text):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 512,256, got {text!r}")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return values


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--model", required=True, choices=MODELS, help="which autoencoder")
    g.add_argument("--dataset", required=True, choices=DATASETS, help="which images")
    g.add_argument("--data-dir", default="./data", help="where torchvision finds the datasets (default: ./data)")
    g.add_argument("--out-dir", default=None, help="where ckpt.pt, log.jsonl, results.json go "
                   "(default: out/<model>-<dataset>)")
    g.add_argument("--epochs", type=count, default=20, help="pretraining epochs (default: 20)")
    g.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per step; small batches mean more steps, which short runs and small datasets "
                   "need more than the speed of large ones (default: 64)")
    g.add_argument("--lr", type=positive, default=1e-3, help="peak learning rate of AdamW (default: 1e-3)")
    g.add_argument("--weight-decay", type=non_negative, default=None,
                   help="AdamW weight decay (default: 0.05 for mae, 0 for the others)")
    g.add_argument("--warmup-epochs", type=count, default=None,
                   help="linear lr warm-up (default: 2 for mae, 0 for the others)")
    g.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                   help="lr after warm-up (default: cosine)")
    g.add_argument("--seed", type=int, default=0, help="(default: 0)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="(default: cuda if available, else cpu)")
    g.add_argument("--train-size", type=count, default=0, help="use the first N training images; 0 = all (default: 0)")
    g.add_argument("--resume", action="store_true", help="continue from <out-dir>/ckpt.pt")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in an --out-dir that already holds a run (its files are replaced)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (GPU speed-up)")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="autocast: auto = bf16 on CUDA, fp32 on CPU; bf16 also speeds up CPUs with bf16 "
                   "instructions (default: auto)")

    g = p.add_argument_group("downstream evaluation")
    g.add_argument("--eval", default="linear,knn", help="comma list of linear,knn,finetune; '' for none "
                   "(default: linear,knn)")
    g.add_argument("--finetune-epochs", type=positive_int, default=10, help="(default: 10)")
    g.add_argument("--head", choices=["linear", "mlp"], default="linear",
                   help="fine-tuning head: linear, or mlp = the DAE-vs-MAE study's 3 layers with "
                   "BatchNorm/ReLU/dropout (default: linear)")
    g.add_argument("--head-lr", type=positive, default=1e-3, help="fine-tuning lr of the head (default: 1e-3)")
    g.add_argument("--finetune-lr", type=positive, default=None,
                   help="fine-tuning lr of the encoder (default: same as --head-lr)")
    g.add_argument("--augment", choices=["none", "shift-flip"], default="none",
                   help="fine-tuning augmentation: shift-flip = random shifts of up to 2 pixels and left-right "
                   "flips (not on MNIST: a mirrored digit is another shape); it cost the conv DAE 1.5 points "
                   "in 10 fine-tuning epochs, see README (default: none)")
    g.add_argument("--label-smoothing", type=fraction, default=0.1, help="fine-tuning cross-entropy (default: 0.1)")
    g.add_argument("--layer-decay", type=bounded(float, 0, 1, low_open=True), default=1.0,
                   help="mae fine-tuning: block i gets lr x decay^(depth + 1 - layer id) (default: 1.0, no decay)")

    g = p.add_argument_group("ae, dae, vae, mcae")
    g.add_argument("--arch", choices=["mlp", "conv"], default=None, help=f"(default: {AEConfig.arch})")
    g.add_argument("--hidden", type=int_tuple, default=None,
                   help=f"mlp hidden widths, e.g. 512,256 or 656,512,256,128 (default: "
                   f"{','.join(map(str, AEConfig.hidden))})")
    g.add_argument("--latent-dim", type=positive_int, default=None,
                   help=f"latent vector size of mlp and of the vae (default: {AEConfig.latent_dim}, "
                   f"vae {VAEConfig.latent_dim})")
    g.add_argument("--channels", type=int_tuple, default=None,
                   help=f"conv: channels of each stride-2 conv (default: {','.join(map(str, AEConfig.channels))})")
    g.add_argument("--latent-channels", type=positive_int, default=None,
                   help=f"conv: channels of the latent map, e.g. 8 -> 8x3x3 on 28x28 "
                   f"(default: {AEConfig.latent_channels})")
    g.add_argument("--l1", type=non_negative, default=None, help="L1 penalty on the latent code (default: 0)")
    g.add_argument("--noise-std", type=non_negative, default=None,
                   help=f"dae: std of the Gaussian noise; variance 0.1 = std 0.316 (default: {DAEConfig.noise_std})")
    g.add_argument("--beta", type=non_negative, default=None, help=f"vae: weight of the KL term (default: {VAEConfig.beta})")
    g.add_argument("--recon-loss", choices=["bce", "mse"], default=None,
                   help=f"vae: reconstruction term (default: {VAEConfig.recon_loss})")
    g.add_argument("--kl-warmup-epochs", type=count, default=None,
                   help=f"vae: epochs over which the KL weight ramps up to beta (default: {VAEConfig.kl_warmup_epochs})")
    g.add_argument("--mask-type", choices=["pixel", "block"], default=None,
                   help=f"mcae: hide single pixels or square blocks (default: {MCAEConfig.mask_type})")
    g.add_argument("--block-size", type=positive_int, default=None,
                   help=f"mcae: side of a hidden block (default: {MCAEConfig.block_size})")
    g.add_argument("--loss-on", choices=["all", "masked"], default=None,
                   help=f"mcae: reconstruction loss on all pixels or hidden ones only (default: {MCAEConfig.loss_on})")
    g.add_argument("--mask-ratio", type=fraction, default=None,
                   help=f"mcae, mae: fraction hidden (default: mcae {MCAEConfig.mask_ratio}, mae {MAEConfig.mask_ratio})")

    g = p.add_argument_group("mae")
    g.add_argument("--patch-size", type=positive_int, default=None, help=f"(default: {MAEConfig.patch_size})")
    g.add_argument("--embed-dim", type=positive_int, default=None, help=f"encoder width (default: {MAEConfig.embed_dim})")
    g.add_argument("--depth", type=positive_int, default=None, help=f"encoder blocks (default: {MAEConfig.depth})")
    g.add_argument("--num-heads", type=positive_int, default=None, help=f"encoder heads (default: {MAEConfig.num_heads})")
    g.add_argument("--decoder-embed-dim", type=positive_int, default=None, help=f"(default: {MAEConfig.decoder_embed_dim})")
    g.add_argument("--decoder-depth", type=positive_int, default=None, help=f"(default: {MAEConfig.decoder_depth})")
    g.add_argument("--decoder-num-heads", type=positive_int, default=None, help=f"(default: {MAEConfig.decoder_num_heads})")
    g.add_argument("--norm-pix-loss", action="store_true", default=None,
                   help="predict each patch normalised by its own mean and std")
    g.add_argument("--pool", choices=["cls", "mean"], default=None,
                   help=f"encode(): CLS token or mean of patch tokens (default: {MAEConfig.pool})")

    args = p.parse_args(argv)
    if args.weight_decay is None:
        args.weight_decay = 0.05 if args.model == "mae" else 0.0
    if args.warmup_epochs is None:
        args.warmup_epochs = 2 if args.model == "mae" else 0
    args.out_dir = args.out_dir or os.path.join("out", f"{args.model}-{args.dataset}")
    unknown = set(p for p in args.eval.split(",") if p) - {"linear", "knn", "finetune"}
    if unknown:
        p.error(f"--eval: unknown protocol {', '.join(sorted(unknown))} (choose from linear, knn, finetune)")
    check_device(p, args.device)
    # build the model once on the CPU, so a setting it cannot take (a patch size that does not divide
    # the image, too many heads for the width, nothing left visible) is refused before any work starts
    _, channels, size, _, _, _ = DATASETS[args.dataset]
    try:
        MODELS[args.model][0](build_config(args.model, args, channels, size))
    except ValueError as e:
        p.error(f"--model {args.model}: {e}")
    return args


def check_device(p, device):
    try:
        device = torch.device(device)
    except RuntimeError:
        p.error(f"--device: unknown device {device!r} (use cpu, cuda, cuda:N or mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {device}: torch sees no CUDA GPU here (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        p.error(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA GPU(s) here (use --device cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        p.error("--device mps: no Apple GPU here (use --device cpu)")


def check_out_dir(args, ckpt_path, results_path):
    """Refuse to start over a finished or interrupted run by accident, and fail now, not after an epoch,
    if --out-dir cannot be written."""
    finished = [os.path.basename(p) for p in (ckpt_path, results_path) if os.path.exists(p)]
    if finished and not args.resume and not args.overwrite:
        raise RunError(f"{args.out_dir} already holds a run ({', '.join(finished)}): continue it with --resume, "
                       f"start over with --overwrite, or pick another --out-dir")
    created = not os.path.isdir(args.out_dir)
    os.makedirs(args.out_dir, exist_ok=True)
    probe = os.path.join(args.out_dir, ".write-test")
    with open(probe, "w"):
        pass
    os.remove(probe)
    if created:  # made again once there is something to write: a run that fails to start leaves no trace
        os.rmdir(args.out_dir)


def main(argv=None):
    args = parse_args(argv)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: float32 range, tensor-core speed
        torch.backends.cudnn.allow_tf32 = True
    ckpt_path, log_path = os.path.join(args.out_dir, "ckpt.pt"), os.path.join(args.out_dir, "log.jsonl")
    results_path = os.path.join(args.out_dir, "results.json")
    check_out_dir(args, ckpt_path, results_path)

    t0 = time.time()
    data = load_data(args.dataset, args.data_dir, args.device, args.train_size, args.seed)
    print(f"data: {args.dataset}, {len(data.train_x)} train / {len(data.test_x)} test images "
          f"{tuple(data.train_x.shape[1:])} on {args.device} in {time.time() - t0:.1f}s")

    torch.manual_seed(args.seed)
    config = build_config(args.model, args, data.train_x.shape[1], data.train_x.shape[2])
    model = MODELS[args.model][0](config).to(args.device)
    if hasattr(model, "init_output_bias"):  # AE family: the sigmoid decoder starts at the mean image
        model.init_output_bias(data.train_x.mean(dim=0, dtype=torch.float32) / 255)
    # AdamW with beta2 0.95 for the ViT, as the MAE paper; the standard 0.999 for the conv/mlp models
    betas = (0.9, 0.95) if args.model == "mae" else (0.9, 0.999)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=betas, weight_decay=args.weight_decay)
    start_epoch = 0
    if args.resume:
        ckpt = load_checkpoint(ckpt_path, args.model)
        if ckpt["config"] != dataclasses.asdict(config):
            changed = {k: (v, dataclasses.asdict(config)[k]) for k, v in ckpt["config"].items()
                       if dataclasses.asdict(config).get(k) != v}
            raise RunError(f"{ckpt_path} was trained with other model settings "
                           f"({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}): "
                           f"repeat the original flags or use another --out-dir")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = ckpt["epoch"]
        print(f"resumed from {ckpt_path} after epoch {start_epoch}")
    os.makedirs(args.out_dir, exist_ok=True)
    entries = read_log(log_path, start_epoch)
    with open(log_path, "w") as f:  # keep the log in step with the checkpoint
        f.writelines(json.dumps(e) + "\n" for e in entries)
    n_params = sum(p.numel() for p in model.parameters())
    feature_dim = extract_features(model, data.test_x[:1], 1, args.device).shape[1]
    print(f"model: {config}\n{n_params / 1e6:.2f}M parameters, {feature_dim}-d features")
    if start_epoch < args.epochs:
        pretrain(model, data, args, optimizer, start_epoch, log_path)

    results = evaluate(model, data, args)
    results.update(downstream(model, data, args))
    results.update({"model": args.model, "dataset": args.dataset, "epochs": args.epochs,
                    "train_size": len(data.train_x), "parameters": n_params})
    if args.resume and os.path.exists(results_path):  # e.g. --resume --eval finetune keeps linear and knn
        with open(results_path) as f:
            results = {**json.load(f), **results}
    with open(results_path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(results_path + ".tmp", results_path)
    print("results: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items() if isinstance(v, float)))
    warning = dead_run_warning(results)
    if warning:
        print(warning)
    written = "ckpt.pt, log.jsonl, results.json" if os.path.exists(ckpt_path) else "results.json (nothing pretrained)"
    print(f"wrote {args.out_dir}/{written}")


if __name__ == "__main__":
    try:
        main()
    except (RunError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # unwritable --out-dir, unreadable --data-dir, a full disk: the file and the reason
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ninterrupted: ckpt.pt keeps the last finished epoch; continue with the same command and --resume",
              file=sys.stderr)
        sys.exit(130)
