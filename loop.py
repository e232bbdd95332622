"""
The training loop every run shares: AdamW with a per-group base lr, warm-up + cosine lr, one epoch of
steps, bf16 autocast and crash-safe saves.

train.py pretrains with it; evaluate.py fine-tunes and fits the linear probe with the same `train_epoch`,
so what is said here about a step holds for all three.
"""
import dataclasses
import json
import math
import os
import time

import torch

from data import RunError, batches


# -----------------------------------------------------------------------------
# optimiser, lr schedule, precision


def make_optimizer(param_groups, betas, weight_decay):
    """AdamW over groups of {'params', 'lr'}; each group remembers its lr as 'base_lr' for the schedule."""
    optimizer = torch.optim.AdamW(param_groups, betas=betas, weight_decay=weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    return optimizer


def lr_factor(step, total_steps, warmup_steps, schedule="cosine"):
    """Linear warm-up to 1, then cosine decay to 0 (or constant 1). A function of the step alone, so a
    resumed run needs no scheduler state."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def autocast(device, precision="auto"):
    """bf16 autocast for --precision bf16, and for auto on CUDA (tensor cores); plain float32 otherwise.

    On a CPU with bf16 instructions (avx512_bf16, AMX) bf16 is worth asking for: the MAE's fine-tuning
    step ran 1.3x faster on one such core. Without them, each bf16 op is emulated: 13x slower.
    """
    device_type = torch.device(device).type
    enabled = precision == "bf16" or (precision == "auto" and device_type == "cuda")
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)


# -----------------------------------------------------------------------------
# one epoch of steps


def format_seconds(s):
    return f"{s / 60:.1f}m" if s >= 90 else f"{s:.0f}s"


def train_epoch(step_loss, optimizer, perm, batch_size, first_step, schedule, label="", quiet=False):
    """One pass over the indices perm in batches: every group's lr = base_lr * schedule(step), then
    loss, out = step_loss(idx), backward, and an AdamW step.

    Returns the epoch's mean train_loss and the mean of every scalar the model put in out (the VAE's kl
    and recon_loss, ...). A progress line every 15 s (and after step 20 of a run) unless quiet.
    """
    steps = math.ceil(len(perm) / batch_size)
    sums, t0 = {}, time.time()
    last_print = t0
    for i, s in enumerate(batches(len(perm), batch_size)):
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * schedule(first_step + i)
        loss, out = step_loss(perm[s])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {i + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scalars = {"train_loss": loss, **{k: v for k, v in out.items() if v.ndim == 0}}
        for key, value in scalars.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()  # summed as tensors, read once an epoch
        now = time.time()
        if not quiet and (now - last_print > 15 or (first_step == 0 and i == 19)):
            rate = (i + 1) * batch_size / (now - t0)
            print(f"  {label}step {i + 1}/{steps} | loss {loss.item():.4f} | {rate:.0f} img/s "
                  f"| epoch eta {format_seconds((steps - i - 1) * batch_size / rate)}", flush=True)
            last_print = now
    return {key: (value / steps).item() for key, value in sums.items()}


# -----------------------------------------------------------------------------
# checkpoints and logs, written so that a crash never leaves a broken file


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


def save_checkpoint(model, optimizer, epoch, args):
    save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "model_name": args.model, "config": dataclasses.asdict(model.config), "args": vars(args)},
                os.path.join(args.out_dir, "ckpt.pt"))


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


def read_log(log_path, up_to_epoch):
    """Log entries of the epochs a checkpoint holds (a crash between log and checkpoint leaves extra)."""
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    return [e for e in entries if e["epoch"] <= up_to_epoch]
