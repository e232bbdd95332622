"""
How good a trained model is: reconstruction on the test set, then what its features are worth.

- `evaluate`: test loss, MSE, PSNR, SSIM (and hidden-pixel PSNR of masked models) over the test set.
- `downstream`: the protocols of --eval on the encoder's features `model.encode(x)`:
  linear = a linear classifier on frozen features; knn = k-nearest neighbours (k=20, cosine);
  finetune = encoder and a new head trained together on the labels (a copy: ckpt.pt keeps the
  pretrained weights), saved as finetune.pt.
"""
import dataclasses
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import metrics
from data import DIGITS, batches, color_jitter, random_shift_flip, to_float
from loop import autocast, lr_factor, make_optimizer, save_atomic, train_epoch


@torch.no_grad()
def evaluate(model, data, args):
    """Test loss, reconstruction quality and every scalar the model reports, averaged over the test set.
    Noise and masks are drawn from a fixed seed, so two evaluations of the same weights agree."""
    model.eval()
    sums = {}
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
                "psnr": metrics.psnr(recon, x), "ssim": metrics.ssim_fast(recon, x),
                "psnr_input": metrics.psnr(out["input"].float(), x),  # the corrupted input, as a baseline
                # how much the reconstructions differ from image to image: ~0 when the model gives the
                # same picture (all black, the mean image) whatever it is shown
                "recon_spread": recon.flatten(1).std(dim=0, correction=0).mean().expand(len(x)),
                **{k: v.float().expand(len(x)) for k, v in out.items() if v.ndim == 0},
            }
            if "mask" in out and out["mask"].any():  # masked models: how well the hidden pixels were filled
                psnr_hidden = metrics.hidden_psnr(recon, x, out["mask"])  # NaN: an image with nothing hidden
                per_image["psnr_hidden"] = psnr_hidden.nan_to_num(psnr_hidden.nanmean().item())
            for key, value in per_image.items():
                sums[key] = sums.get(key, 0.0) + value.sum().item()
    model.train()
    return {key: total / len(data.test_x) for key, total in sums.items()}


def dead_run_warning(stats):
    """One line when a model outputs about the same image for every input (a dead run: a saturated
    sigmoid, dead ReLUs, a diverged lr), whose figures would otherwise look like results; else None."""
    if stats.get("recon_spread", 1.0) < 0.01:
        return (f"warning: the reconstructions hardly differ between images (spread {stats['recon_spread']:.4f}, "
                f"PSNR {stats['psnr']:.2f} dB): the model outputs about the same image for every input and "
                f"has not learned; try a lower --lr or more epochs")
    return None


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


def fit_classifier(param_groups, forward, inputs, labels, epochs, batch_size, weight_decay, label_smoothing=0.0,
                   warmup_epochs=0, quiet=False):
    """Minimise the cross-entropy of forward(inputs[idx]) with AdamW and a warm-up + cosine schedule."""
    optimizer = make_optimizer(param_groups, (0.9, 0.999), weight_decay)
    steps = math.ceil(len(inputs) / batch_size)

    def step_loss(idx):
        return F.cross_entropy(forward(inputs[idx]), labels[idx], label_smoothing=label_smoothing), {}

    for epoch in range(epochs):
        t0 = time.time()
        perm = torch.randperm(len(inputs), device=inputs.device)
        if len(perm) % batch_size == 1:  # BatchNorm in a head cannot train on a last batch of one
            perm = perm[:-1]
        stats = train_epoch(step_loss, optimizer, perm, batch_size, epoch * steps,
                            lambda step: lr_factor(step, epochs * steps, warmup_epochs * steps),
                            label="finetune ", quiet=quiet)
        if not quiet:
            print(f"finetune epoch {epoch + 1}/{epochs} | loss {stats['train_loss']:.4f} | {time.time() - t0:.1f}s")


def linear_probe(train_features, train_labels, test_features, test_labels, num_classes, epochs=100):
    """Accuracy of a linear classifier on frozen, standardised features."""
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    train_features, test_features = (train_features - mean) / std, (test_features - mean) / std
    head = nn.Linear(train_features.shape[1], num_classes).to(train_features.device)
    with torch.enable_grad():
        fit_classifier([{"params": head.parameters(), "lr": 1e-3}], head, train_features, train_labels,
                       epochs, 1024, 1e-4, quiet=True)
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


def layer_decay_groups(model, lr, weight_decay, layer_decay):
    """Parameter groups of a ViT encoder with layer-wise lr decay (BEiT, MAE fine-tuning).

    Layer 0 is the patch embedding and CLS token, layer i + 1 encoder block i, layer depth + 1 the final
    norm; a layer's lr is lr * layer_decay ** (depth + 1 - layer), so the layers near the input, which
    pretraining taught the most general things, move least. Biases, norms and the CLS token get no
    weight decay. The decoder is left out: fine-tuning does not use it.
    """
    depth, groups = len(model.blocks), {}
    for name, param in model.named_parameters():
        part = name.split(".")[0]
        if part not in model.encoder_parts:
            continue
        if part == "blocks":
            layer = int(name.split(".")[1]) + 1        # blocks.3.attn.qkv.weight -> layer 4
        elif part == "norm":
            layer = depth + 1
        else:
            layer = 0                                  # patch embedding, CLS token
        no_decay = param.ndim == 1 or part == "cls_token"
        group = groups.setdefault((layer, no_decay), {"params": [], "lr": lr * layer_decay ** (depth + 1 - layer),
                                                      "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def finetune(model, data, args, num_classes):
    """Train encoder and head together on labels; the encoder gets its own (usually lower) lr."""
    dim = extract_features(model, data.test_x[:2], 2, args.device).shape[1]
    clf = Classifier(model, make_head(args.head, dim, num_classes)).to(args.device)
    encoder_lr = args.finetune_lr if args.finetune_lr is not None else args.head_lr
    if hasattr(model, "encoder_parts") and args.layer_decay < 1:
        groups = layer_decay_groups(model, encoder_lr, args.weight_decay, args.layer_decay)
    else:
        groups = [{"params": model.parameters(), "lr": encoder_lr}]  # the decoder gets no gradient: untouched
    groups.append({"params": clf.head.parameters(), "lr": args.head_lr})
    flip = data.classes != DIGITS  # a mirrored 2 is no longer a 2; a mirrored shoe is still a shoe

    def forward(images):
        x = to_float(images)
        if data.jitter:
            x = color_jitter(x)
        if args.augment == "shift-flip":
            x = random_shift_flip(x, flip=flip)
        with autocast(args.device, args.precision):
            return clf(x).float()

    clf.train()
    # one warm-up epoch: the new head's first, large gradients would otherwise shake the pretrained blocks
    fit_classifier(groups, forward, data.train_x, data.train_y, args.finetune_epochs, args.batch_size,
                   args.weight_decay, args.label_smoothing, warmup_epochs=1 if args.finetune_epochs > 1 else 0)
    clf.eval()
    correct = 0
    with torch.no_grad():
        for s in batches(len(data.test_x), args.batch_size):
            with autocast(args.device, args.precision):
                correct += (clf(to_float(data.test_x[s])).argmax(1) == data.test_y[s]).sum().item()
    save_atomic({"model": model.state_dict(), "head": clf.head.state_dict(), "head_kind": args.head,
                 "model_name": args.model, "config": dataclasses.asdict(model.config), "args": vars(args)},
                os.path.join(args.out_dir, "finetune.pt"))
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
        copy = type(model)(model.config).to(args.device)
        copy.load_state_dict(model.state_dict())
        torch.manual_seed(args.seed)  # the same head, order and drop path whatever else --eval ran first
        results["finetune_acc"] = finetune(copy, data, args, num_classes)
        print(f"fine-tune accuracy {results['finetune_acc']:.4f} (model and head in finetune.pt)")
    return results
