"""
Train an autoencoder, then measure what its features are worth.

    python train.py --model mae --dataset mnist --train-size 4000     # about 5 minutes on one CPU core
    python train.py --model dae --dataset fashion-mnist --eval linear,knn,finetune

A run, in the order this file reads:
1. flags: every value checked before any work starts (a bad one is one line, not a traceback);
   --out-dir is locked, so a second run cannot write into a live one.
2. data (data.py): the whole split loaded once into a uint8 tensor on the device.
3. model and optimizer, from the table MODELS; --resume picks up ckpt.pt.
4. pretraining: the epoch loop written out, each step forward, loss, backward, AdamW step; after every
   epoch a line, log.jsonl and ckpt.pt, so a run can be stopped and resumed.
5. evaluation: reconstruction on the test set, then what the features are worth (--eval): a linear probe
   and k-NN on frozen features, each beside the same probes on raw pixels and on the untrained encoder.
6. fine-tuning (--eval finetune): the encoder and a new head trained on the labels.
Writes ckpt.pt, log.jsonl, results.json (and finetune.pt) to --out-dir (default out/<model>-<dataset>).
"""
import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import shlex
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import metrics
from ae import AE, AEConfig
from dae import DAE, DAEConfig
from data import DATASETS, RunError, batches, load_data, to_float
from mae import MAE, MAEConfig
from mcae import MCAE, MCAEConfig
from vae import VAE, VAEConfig

# how each model is trained: AdamW's betas and weight decay, and epochs of linear lr warm-up
CONV_RECIPE = dict(betas=(0.9, 0.999), weight_decay=0.0, warmup_epochs=0)
# the ViT as in the MAE paper: beta2 0.95 and weight decay 0.05 keep attention training stable
VIT_RECIPE = dict(betas=(0.9, 0.95), weight_decay=0.05, warmup_epochs=2)

# the one table from model name to (class, config, recipe); everything else goes through the model contract
MODELS = {
    "ae": (AE, AEConfig, CONV_RECIPE),
    "dae": (DAE, DAEConfig, CONV_RECIPE),
    "vae": (VAE, VAEConfig, CONV_RECIPE),
    "mcae": (MCAE, MCAEConfig, CONV_RECIPE),
    "mae": (MAE, MAEConfig, VIT_RECIPE),
}
AE_FAMILY = ("ae", "dae", "vae", "mcae")
# the model settings among the flags (the config field each sets), and the models each one applies to
MODEL_FLAGS = {
    "arch": AE_FAMILY, "hidden": AE_FAMILY, "latent_dim": AE_FAMILY, "channels": AE_FAMILY,
    "latent_channels": AE_FAMILY, "l1": ("ae", "dae", "mcae"), "noise_std": ("dae",), "beta": ("vae",),
    "mask_type": ("mcae",), "block_size": ("mcae",), "mask_ratio": ("mcae", "mae"),
    "patch_size": ("mae",), "embed_dim": ("mae",), "depth": ("mae",), "num_heads": ("mae",),
    "decoder_embed_dim": ("mae",), "decoder_depth": ("mae",), "decoder_conv": ("mae",), "finetune_mask_ratio": ("mae",),
    "norm_pix_loss": ("mae",),
}
# fine-tuning, every model: AdamW's default betas (as the MAE paper fine-tunes), and label smoothing: the
# cross-entropy aims at 0.9 for the label plus 0.1 spread over all classes rather than 1 (less overconfidence)
FINETUNE_BETAS, FINETUNE_LABEL_SMOOTHING = (0.9, 0.999), 0.1

# -----------------------------------------------------------------------------
# flags


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
fraction = bounded(float, 0, 1, high_open=True)          # mask ratios


def int_tuple(text):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 512,256, got {text!r}")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return values


def image_channels(text):
    if text not in ("1", "3"):
        raise argparse.ArgumentTypeError(f"1 (grey) or 3 (RGB), got {text!r} (conv widths are --conv-channels)")
    return int(text)


class Parser(argparse.ArgumentParser):
    """argparse with a bad flag reported in one line, without the page of usage (--help shows it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists every flag)\n")


def parse_args(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--model", required=True, choices=MODELS, help="which autoencoder")
    g.add_argument("--dataset", required=True, choices=DATASETS, help="which images")
    g.add_argument("--data-dir", default="./data", help="where torchvision finds the datasets; for folder, the "
                   "folder of class sub-folders (default: ./data)")
    g.add_argument("--out-dir", default=None, help="where ckpt.pt, log.jsonl, results.json go "
                   "(default: out/<model>-<dataset>)")
    g.add_argument("--train-size", type=count, default=0, help="use the first N training images; 0 = all. "
                   "A few thousand make a first run short (default: 0)")
    g.add_argument("--epochs", type=count, default=20, help="pretraining epochs; 0 = keep the untrained model, "
                   "the from-scratch baseline of fine-tuning (default: 20)")
    g.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per step, over all processes under torchrun (default: 64)")
    g.add_argument("--lr", type=positive, default=1e-3, help="peak learning rate of AdamW, reached after "
                   "the warm-up (mae: 2 epochs) and decayed to 0 on a cosine (default: 1e-3)")
    g.add_argument("--weight-decay", type=non_negative, default=None,
                   help="AdamW weight decay of pretraining and fine-tuning (default: 0.05 for mae, 0 for the others)")
    g.add_argument("--seed", type=int, default=0, help="seed of the initial weights, the order of the images, "
                   "noise and masks; the same seed repeats a run (default: 0)")
    g.add_argument("--device", default=default_device(), help="cpu, cuda, cuda:N or mps (default: cuda, "
                   "else mps, else cpu: here %(default)s)")
    g.add_argument("--image-size", type=positive_int, default=None, help="folder: images are resized to this "
                   "square (default: 32)")
    g.add_argument("--channels", type=image_channels, default=None, dest="image_channels", metavar="{1,3}",
                   help="folder: 1 = grey, 3 = RGB (default: 3)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its ckpt.pt")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in an --out-dir that already holds a run (its files are replaced)")

    g = p.add_argument_group("what the features are worth")
    g.add_argument("--eval", default="linear,knn", help="comma list of linear (a linear probe on frozen "
                   "features), knn (20 nearest neighbours), finetune (encoder and head trained on the labels); "
                   "'' for none (default: linear,knn)")
    g.add_argument("--finetune-epochs", type=positive_int, default=10, help="epochs of fine-tuning (default: 10)")
    g.add_argument("--head", choices=["linear", "mlp"], default="linear",
                   help="fine-tuning head: linear, or mlp = the DAE-vs-MAE study's 3 layers with "
                   "BatchNorm/ReLU/dropout (default: linear)")
    g.add_argument("--head-lr", type=positive, default=1e-3, help="fine-tuning lr of the head (default: 1e-3)")
    g.add_argument("--finetune-lr", type=positive, default=None,
                   help="fine-tuning lr of the encoder (default: the same as --head-lr)")

    g = p.add_argument_group("ae, dae, vae, mcae")
    g.add_argument("--arch", choices=["mlp", "conv"], default=None,
                   help=f"fully connected layers or stride-2 convolutions (default: {AEConfig.arch})")
    g.add_argument("--hidden", type=int_tuple, default=None,
                   help=f"mlp: hidden widths, e.g. 512,256 or 656,512,256,128 (default: "
                   f"{','.join(map(str, AEConfig.hidden))})")
    g.add_argument("--latent-dim", type=positive_int, default=None,
                   help=f"size of the latent vector of an mlp and of the vae (default: {AEConfig.latent_dim}, "
                   f"vae {VAEConfig.latent_dim})")
    g.add_argument("--conv-channels", type=int_tuple, default=None, dest="channels", metavar="C1,C2,..",
                   help=f"conv: channels of each stride-2 conv (default: {','.join(map(str, AEConfig.channels))})")
    g.add_argument("--latent-channels", type=positive_int, default=None,
                   help=f"conv: channels of the latent map, e.g. 8 -> 8x3x3 on 28x28 "
                   f"(default: {AEConfig.latent_channels})")
    g.add_argument("--l1", type=non_negative, default=None,
                   help="ae, dae, mcae: weight of an L1 penalty on the latent code (default: 0)")
    g.add_argument("--noise-std", type=non_negative, default=None,
                   help=f"dae: std of the Gaussian noise; variance 0.1 = std 0.316 (default: {DAEConfig.noise_std})")
    g.add_argument("--beta", type=non_negative, default=None,
                   help=f"vae: weight of the KL term (default: {VAEConfig.beta})")
    g.add_argument("--mask-type", choices=["pixel", "block"], default=None,
                   help=f"mcae: hide single pixels or square blocks (default: {MCAEConfig.mask_type})")
    g.add_argument("--block-size", type=positive_int, default=None,
                   help=f"mcae: side of a hidden block (default: {MCAEConfig.block_size})")
    g.add_argument("--mask-ratio", type=fraction, default=None,
                   help=f"mcae, mae: fraction hidden (default: mcae {MCAEConfig.mask_ratio}, mae {MAEConfig.mask_ratio})")

    g = p.add_argument_group("mae")
    g.add_argument("--patch-size", type=positive_int, default=None,
                   help=f"side of a square patch, a divisor of the image size (default: {MAEConfig.patch_size})")
    g.add_argument("--embed-dim", type=positive_int, default=None, help=f"encoder width (default: {MAEConfig.embed_dim})")
    g.add_argument("--depth", type=positive_int, default=None, help=f"encoder blocks (default: {MAEConfig.depth})")
    g.add_argument("--num-heads", type=positive_int, default=None, help=f"encoder heads (default: {MAEConfig.num_heads})")
    g.add_argument("--decoder-embed-dim", type=positive_int, default=None,
                   help=f"decoder width (default: {MAEConfig.decoder_embed_dim})")
    g.add_argument("--decoder-depth", type=positive_int, default=None,
                   help=f"decoder blocks (default: {MAEConfig.decoder_depth})")
    g.add_argument("--decoder-conv", type=count, default=None, metavar="K",
                   help="a K x K conv over the decoder's grid of patches, K odd: sharper reconstructions "
                   f"sooner, poorer features; 0 = the paper's decoder (default: {MAEConfig.decoder_conv})")
    g.add_argument("--finetune-mask-ratio", type=fraction, default=None,
                   help="fine-tuning: fraction of each training image's patches the encoder drops, as in "
                   f"pretraining; test images keep all (default: {MAEConfig.finetune_mask_ratio})")
    g.add_argument("--norm-pix-loss", action="store_true", default=None,
                   help="predict each patch normalised by its own mean and std: better features; its pictures "
                   "and PSNR borrow each hidden patch's true mean and std, so they flatter it")

    args = p.parse_args(argv)
    for name, models in MODEL_FLAGS.items():
        if getattr(args, name) is not None and args.model not in models:
            flag = "--conv-channels" if name == "channels" else "--" + name.replace("_", "-")
            p.error(f"{flag} is for --model {' or '.join(models)}, not {args.model}")
    if args.dataset != "folder" and (args.image_size or args.image_channels):
        p.error(f"--image-size and --channels are for --dataset folder; {args.dataset} has its own size")
    unknown = set(name for name in args.eval.split(",") if name) - {"linear", "knn", "finetune"}
    if unknown:
        p.error(f"--eval: unknown protocol {', '.join(sorted(unknown))} (choose from linear, knn, finetune)")
    check_device(p, args.device)
    args.weight_decay = MODELS[args.model][2]["weight_decay"] if args.weight_decay is None else args.weight_decay
    args.out_dir = args.out_dir or os.path.join("out", f"{args.model}-{args.dataset}")
    # build the model once on the CPU, so a setting it cannot take (a patch size that does not divide
    # the image, too many heads for the width, nothing left visible) is refused before any work starts
    try:
        MODELS[args.model][0](build_config(args.model, vars(args), *image_shape(args.dataset, args.image_channels, args.image_size)))
    except ValueError as e:
        p.error(f"--model {args.model}: {e}")
    return args


def default_device():
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


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


def image_shape(dataset, image_channels=None, image_size=None):
    """(channels, size) of the images: the dataset's own, or what --channels/--image-size ask of a folder."""
    _, channels, size, _, _, _ = DATASETS[dataset]
    if dataset == "folder":
        return image_channels or channels, image_size or size
    return channels, size


def build_config(model_name, flags, in_channels, image_size, saved=None):
    """The model's config: the dataclass defaults, or the saved config of the checkpoint a run resumes,
    overridden by every flag of the same name that was given (flags: {name: value or None})."""
    config_cls = MODELS[model_name][1]
    names = [f.name for f in dataclasses.fields(config_cls)]
    given = {name: flags[name] for name in names if flags.get(name) is not None}
    saved = {k: v for k, v in (saved or {}).items() if k in names}  # a field this version lacks is left out
    return config_cls(**{**saved, **given, "in_channels": in_channels, "image_size": image_size})


# -----------------------------------------------------------------------------
# the run directory: owned by one run at a time, written so that a crash never leaves a broken file


def lock_out_dir(out_dir):
    """An exclusive lock on OUT_DIR/.lock, held while this process lives: -> the open lock file.

    The operating system releases the lock when the process ends, however it ends (kill -9 too), so a
    crashed run never leaves a stale lock behind. A second run on the same directory finds it held and
    stops, naming the live run, before it reads data or touches a file.
    """
    import fcntl  # POSIX; elsewhere (Windows) runs are not locked
    os.makedirs(out_dir, exist_ok=True)
    lock = open(os.path.join(out_dir, ".lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        raise RunError(f"{out_dir} is in use by a live run ({lock.read().strip() or 'starting'}): wait for it "
                       f"to end, stop it, or pick another --out-dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}: python {' '.join(sys.argv)}")
    lock.flush()
    return lock


def check_out_dir(out_dir, resume, overwrite):
    """Refuse to start over a finished or interrupted run by accident."""
    finished = [name for name in ("ckpt.pt", "results.json") if os.path.exists(os.path.join(out_dir, name))]
    if finished and not resume and not overwrite:
        raise RunError(f"{out_dir} already holds a run ({', '.join(finished)}): continue it with --resume, "
                       f"start over with --overwrite, or pick another --out-dir")


def save_atomic(obj, path):
    """Write to a temporary file, then rename: an interrupted save (or a full disk) never leaves a
    broken file, and the previous one stays until the new one is complete."""
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


def resume_from(ckpt, ckpt_path, model, optimizer):
    """Load a checkpoint's weights and optimizer state into the model; -> the epoch it finished.
    Settings that keep the weights' shapes may change (they are printed); others cannot."""
    new = dataclasses.asdict(model.config)
    changed = ", ".join(f"{k}: {v} -> {new.get(k)}" for k, v in ckpt["config"].items() if new.get(k) != v)
    if {k: v.shape for k, v in model.state_dict().items()} != {k: v.shape for k, v in ckpt["model"].items()}:
        raise RunError(f"{ckpt_path} was trained with other model settings ({changed}): "
                       f"resume without the flags that change them, or use another --out-dir")
    if changed:  # e.g. another --mask-ratio: the same weights, used differently from now on
        print(f"resuming with changed settings: {changed}")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    print(f"resumed from {ckpt_path} after epoch {ckpt['epoch']}")
    return ckpt["epoch"]


def read_log(log_path, up_to_epoch):
    """Log entries of the epochs a checkpoint holds (a crash between log and checkpoint leaves extra)."""
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    return [e for e in entries if e["epoch"] <= up_to_epoch]


def load_run(run_dir, device="cpu"):
    """(model in eval mode, the run's flags as a dict, checkpoint) of a finished or interrupted run."""
    ckpt = load_checkpoint(os.path.join(run_dir, "ckpt.pt"))
    model_cls, config_cls, _ = MODELS[ckpt["model_name"]]
    model = model_cls(config_cls(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt["args"], ckpt


# -----------------------------------------------------------------------------
# optimisation


def lr_factor(step, total_steps, warmup_steps):
    """Linear warm-up to 1, then cosine decay to 0. A function of the step alone, so a resumed run needs
    no scheduler state."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def autocast(device):
    """bf16 autocast on CUDA (tensor cores; float32's range, so no loss scaling); float32 elsewhere: most
    CPUs emulate bf16 many times slower."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda")


def format_seconds(s):
    return f"{s / 60:.1f}m" if s >= 90 else f"{s:.0f}s"


def show_progress(label, step, steps, loss, images, t0):
    """A line during a long epoch: the step, the loss and how long the epoch has left."""
    rate = images / (time.time() - t0)
    print(f"  {label} step {step}/{steps} | loss {loss:.4f} | {rate:.0f} img/s "
          f"| epoch eta {format_seconds((steps - step) * images / step / rate)}", flush=True)


# -----------------------------------------------------------------------------
# evaluation: reconstruction on the test set, and what the features are worth


@torch.no_grad()
def evaluate(model, test_x, batch_size, seed, device):
    """Test loss, reconstruction quality and every scalar the model reports, averaged over the test set.
    Noise and masks are drawn from a fixed seed, so two evaluations of the same weights agree."""
    model.eval()
    sums = {}
    with torch.random.fork_rng(devices=[test_x.device] if test_x.is_cuda else []):
        torch.manual_seed(seed)
        for s in batches(len(test_x), batch_size):
            x = to_float(test_x[s])
            with autocast(device):
                loss, out = model(x)
            recon = out["recon"].float()
            per_image = {
                "test_loss": loss.float().expand(len(x)),
                "mse": metrics.mse(recon, x), "l1": metrics.l1(recon, x),
                "psnr": metrics.psnr(recon, x), "ssim": metrics.ssim(recon, x),
                # how much the reconstructions differ from image to image: ~0 when the model gives the
                # same picture (all black, the mean image) whatever it is shown
                "recon_spread": recon.flatten(1).std(dim=0, correction=0).mean().expand(len(x)),
                **{k: v.float().expand(len(x)) for k, v in out.items() if v.ndim == 0},
            }
            if out["input"] is not x:  # noisy or masked: the corrupted input itself, the baseline to beat
                per_image["psnr_input"] = metrics.psnr(out["input"].float(), x)
            if "mask" in out and out["mask"].any():  # masked models: how well the hidden pixels were filled
                psnr_hidden = metrics.hidden_psnr(recon, x, out["mask"])  # NaN: an image with nothing hidden
                per_image["psnr_hidden"] = psnr_hidden.nan_to_num(psnr_hidden.nanmean().item())
            for key, value in per_image.items():
                sums[key] = sums.get(key, 0.0) + value.sum().item()
    model.train()
    return {key: total / len(test_x) for key, total in sums.items()}


def dead_run_warning(stats):
    """One line when a model outputs about the same image for every input (a dead run: a saturated
    sigmoid, dead ReLUs, a diverged lr), whose figures would otherwise look like results; else None."""
    if stats.get("recon_spread", 1.0) < 0.01:
        return (f"warning: the reconstructions hardly differ between images (spread {stats['recon_spread']:.4f}, "
                f"PSNR {stats['psnr']:.2f} dB): the model outputs about the same image for every input and "
                f"has not learned; try a lower --lr or more epochs")
    return None


@torch.no_grad()
def extract_features(encode, images, batch_size, device):
    """(N, D) features encode(x) of uint8 images, a batch at a time, computed once for every probe."""
    features = []
    for s in batches(len(images), batch_size):
        with autocast(device):
            features.append(encode(to_float(images[s])).float().flatten(1))
    return torch.cat(features)


def probe_features(model, untrained, data, protocols, batch_size, device):
    """linear_acc and knn_acc of the model's features, each beside the same probe on baselines: raw pixels
    (pixels_*), the same encoder at its initial weights (init_*: what pretraining bought) and, for the MAE,
    the map of patch tokens flattened (tokens_*). -> (results, {prefix: feature size})"""
    model.eval(), untrained.eval()
    sources = {"": model.encode, "pixels_": lambda x: x, "init_": untrained.encode}
    if hasattr(model, "encode_tokens"):
        sources["tokens_"] = lambda x: model.encode_tokens(x)[:, 1:]  # (B, L, D) without the CLS
    results, sizes = {}, {}
    for prefix, encode in sources.items():
        train_f = extract_features(encode, data.train_x, batch_size, device)
        test_f = extract_features(encode, data.test_x, batch_size, device)
        sizes[prefix] = train_f.shape[1]
        if "linear" in protocols:
            results[prefix + "linear_acc"] = metrics.linear_probe(train_f, data.train_y, test_f, data.test_y)
        if "knn" in protocols:
            results[prefix + "knn_acc"] = metrics.knn_accuracy(train_f, data.train_y, test_f, data.test_y)
    model.train()
    return results, sizes


def feature_name(model_name, config):
    """What encode() returns, in words."""
    if model_name == "mae":
        return "CLS token" if config["pool"] == "cls" else "mean of the patch tokens"
    return "mean of q(z|x)" if model_name == "vae" else "latent code"


def probe_table(results, sizes, vector):
    """The probes as a table a student reads at a glance, and a verdict line on what pretraining bought."""
    rows = [("raw pixels", "pixels_"), ("untrained encoder", "init_"), ("trained encoder", ""),
            ("trained patch tokens", "tokens_")]
    lines = [f"{'test accuracy of a probe on':<42} {'linear':>7} {'k-NN':>7}"]
    for name, prefix in rows:
        if prefix in sizes:
            what = f"{name}, {sizes[prefix]}-d" + (f" {vector}" if prefix in ("", "init_") else "")
            lines.append(f"  {what:<40}" + "".join(
                f" {results[prefix + key]:>7.4f}" if prefix + key in results else f" {'':>7}"
                for key in ("linear_acc", "knn_acc")))
    for key, probe in (("knn_acc", "k-NN"), ("linear_acc", "linear probe")):
        if key in results:
            bought, over_pixels = results[key] - results["init_" + key], results[key] - results["pixels_" + key]
            lines.append(f"{probe}: pretraining bought {100 * bought:+.1f} points over the untrained encoder; "
                         f"the features are {abs(100 * over_pixels):.1f} points "
                         f"{'above' if over_pixels >= 0 else 'below'} raw pixels")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# fine-tuning: the encoder and a new head trained together on the labels


def make_head(kind, dim, num_classes):
    if kind == "linear":
        return nn.Linear(dim, num_classes)
    # the DAE-vs-MAE study's DAE head: three linear layers with normalisation, ReLU and dropout between them
    return nn.Sequential(nn.Linear(dim, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(128, num_classes))


def finetune(model, data, epochs, batch_size, head_kind, head_lr, encoder_lr, weight_decay, device):
    """Fine-tune a copy of the model (ckpt.pt keeps the pretrained weights) with a new head on its features:
    warm-up for one epoch (the new head's first, large gradients would shake the pretrained layers), then
    cosine. -> (test accuracy, the fine-tuned model, the head)."""
    model = copy.deepcopy(model)
    num_classes, n = len(data.classes), len(data.train_x)
    head = make_head(head_kind, extract_features(model.eval().encode, data.test_x[:2], 2, device).shape[1],
                     num_classes).to(device)
    # the decoder gets no gradient: AdamW leaves it untouched
    optimizer = torch.optim.AdamW([{"params": model.parameters(), "lr": encoder_lr},
                                   {"params": head.parameters(), "lr": head_lr}], betas=FINETUNE_BETAS,
                                  weight_decay=weight_decay)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    steps_per_epoch = math.ceil(n / batch_size)
    warmup_steps = steps_per_epoch if epochs > 1 else 0
    for epoch in range(epochs):
        model.train(), head.train()
        perm = torch.randperm(n, device=data.train_x.device)
        if n % batch_size == 1:  # BatchNorm in a head cannot train on a last batch of one
            perm = perm[:-1]
        t0 = last_print = time.time()
        loss_sum = 0.0
        for i, s in enumerate(batches(len(perm), batch_size)):
            factor = lr_factor(epoch * steps_per_epoch + i, epochs * steps_per_epoch, warmup_steps)
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * factor
            idx = perm[s]
            with autocast(device):
                logits = head(model.encode(data.train_batch(idx))).float()
            loss = F.cross_entropy(logits, data.train_y[idx], label_smoothing=FINETUNE_LABEL_SMOOTHING)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            if time.time() - last_print > 15:
                show_progress("finetune", i + 1, steps_per_epoch, loss.item(), (i + 1) * batch_size, t0)
                last_print = time.time()
        print(f"finetune epoch {epoch + 1}/{epochs} | loss {loss_sum.item() / (i + 1):.4f} | "
              f"{time.time() - t0:.1f}s", flush=True)
    model.eval(), head.eval()
    with torch.no_grad():
        # the head's outputs on the test images, batch by batch, as extract_features makes any (N, D) output
        logits = extract_features(lambda x: head(model.encode(x)), data.test_x, batch_size, device)  # (N, classes)
    return (logits.argmax(1) == data.test_y).float().mean().item(), model, head


# -----------------------------------------------------------------------------
# the run


@contextlib.contextmanager
def owned_out_dir(out_dir, lock):
    """The run's hold on its --out-dir: the lock of lock_out_dir while the run lives (lock=False: another
    process of the run holds it), and no directory left behind by a run that failed before writing anything."""
    created = not os.path.isdir(out_dir)
    handle = lock_out_dir(out_dir) if lock else None
    try:
        yield
    except BaseException:
        if created and os.path.isdir(out_dir) and os.listdir(out_dir) == [".lock"]:
            os.remove(os.path.join(out_dir, ".lock"))
            os.rmdir(out_dir)
        raise
    finally:
        if handle:
            handle.close()


def main(argv=None):
    args = parse_args(argv)
    # data parallelism: torchrun starts one process per device and tells each its RANK and the WORLD_SIZE
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out_dir = args.out_dir
    with owned_out_dir(out_dir, lock=rank == 0):  # rank 0 alone writes files
        ckpt_path, log_path = os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "log.jsonl")
        results_path = os.path.join(out_dir, "results.json")
        check_out_dir(out_dir, args.resume, args.overwrite)
        if world_size > 1:
            dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
            if args.device.startswith("cuda"):
                args.device = f"cuda:{os.environ['LOCAL_RANK']}"
                torch.cuda.set_device(args.device)
            if rank != 0:
                sys.stdout = open(os.devnull, "w")  # rank 0 alone prints
        device = args.device
        if device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: float32 range, tensor-core speed
            torch.backends.cudnn.allow_tf32 = True

        # data
        t0 = time.time()
        channels, size = image_shape(args.dataset, args.image_channels, args.image_size)
        data = load_data(args.dataset, args.data_dir, device, args.train_size, args.seed, size, channels)
        print(f"data: {args.dataset}, {len(data.train_x)} train / {len(data.test_x)} test images "
              f"{tuple(data.train_x.shape[1:])} on {device} in {time.time() - t0:.1f}s")

        # model and optimizer; a resumed run keeps the settings it was trained with (--norm-pix-loss,
        # --mask-ratio, ...) unless a flag given now changes them
        model_cls, _, recipe = MODELS[args.model]
        ckpt = load_checkpoint(ckpt_path, args.model) if args.resume else None
        config = build_config(args.model, vars(args), channels, size, saved=ckpt["config"] if ckpt else None)
        torch.manual_seed(args.seed)
        model = model_cls(config).to(device)
        if hasattr(model, "init_output_bias"):  # AE family: the sigmoid decoder starts at the mean image
            model.init_output_bias(data.train_x.mean(dim=0, dtype=torch.float32) / 255)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=recipe["betas"], weight_decay=args.weight_decay)
        start_epoch = resume_from(ckpt, ckpt_path, model, optimizer) if ckpt else 0
        if rank == 0:
            entries = read_log(log_path, start_epoch)
            with open(log_path, "w") as f:  # keep the log in step with the checkpoint
                f.writelines(json.dumps(e) + "\n" for e in entries)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {config}\n{n_params / 1e6:.2f}M parameters")

        def save_checkpoint(epoch):
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "model_name": args.model, "config": dataclasses.asdict(config), "args": vars(args)}, ckpt_path)

        # pretraining
        # under torchrun, DDP averages the gradients of all processes in backward(): every process then
        # takes the same AdamW step, so the weights stay identical without ever being sent
        forward = DDP(model) if world_size > 1 else model
        n, batch_size = len(data.train_x), args.batch_size
        steps_per_epoch = math.ceil(n / batch_size)
        total_steps, warmup_steps = args.epochs * steps_per_epoch, recipe["warmup_epochs"] * steps_per_epoch
        epoch_seconds = None
        for epoch in range(start_epoch, args.epochs):
            # everything random in an epoch (order, noise, masks) follows from (seed, epoch): a run resumed
            # after epoch k repeats exactly what the uninterrupted run did
            torch.manual_seed(args.seed * 1000 + epoch)
            model.train()
            perm = torch.randperm(n, device=data.train_x.device)
            t0 = last_print = time.time()
            sums = {}
            for i, s in enumerate(batches(n, batch_size)):
                lr = args.lr * lr_factor(epoch * steps_per_epoch + i, total_steps, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = data.train_batch(perm[s][rank::world_size])  # this process's share of the batch
                with autocast(device):
                    loss, out = forward(x)
                if not torch.isfinite(loss):
                    kept = f"ckpt.pt keeps epoch {epoch}" if epoch > 0 else "nothing was saved"
                    raise FloatingPointError(f"loss became {loss.item()} at step {i + 1} of epoch {epoch + 1}; {kept}. "
                                             f"Try a lower --lr (now {args.lr}).")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                # the epoch's means over steps of the loss and of the model's own scalars (the VAE's kl, ...),
                # summed as tensors on the device and read once an epoch
                for key, value in {"train_loss": loss, **{k: v for k, v in out.items() if v.ndim == 0}}.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().float()
                if time.time() - last_print > 15 or (epoch == 0 and i == 19):  # an early rate and eta, then every 15 s
                    show_progress("pretrain", i + 1, steps_per_epoch, loss.item(), (i + 1) * batch_size, t0)
                    last_print = time.time()
            epoch_seconds = time.time() - t0
            if rank != 0:
                continue
            train_stats = {key: (value / steps_per_epoch).item() for key, value in sums.items()}
            test_stats = evaluate(model, data.test_x, batch_size, args.seed, device)
            entry = {"epoch": epoch + 1, "train_loss": train_stats.pop("train_loss"), "test_loss": test_stats["test_loss"],
                     "psnr": test_stats["psnr"], "ssim": test_stats["ssim"], "seconds": epoch_seconds}
            if "psnr_hidden" in test_stats:  # masked models: the score of the fill-in alone
                entry["psnr_hidden"] = test_stats["psnr_hidden"]
            for key, value in train_stats.items():  # the model's own scalars: train and test
                entry[key], entry["test_" + key] = value, test_stats[key]
            extra = "".join(f" | {key} {value:.2f}" for key, value in train_stats.items())
            hidden = f" (hidden {entry['psnr_hidden']:.2f})" if "psnr_hidden" in entry else ""
            print(f"epoch {epoch + 1}/{args.epochs} | train {entry['train_loss']:.4f} | test {entry['test_loss']:.4f}"
                  f"{extra} | psnr {entry['psnr']:.2f} dB{hidden} | ssim {entry['ssim']:.3f} | {n / epoch_seconds:.0f} "
                  f"img/s | {epoch_seconds:.1f}s | eta {format_seconds(epoch_seconds * (args.epochs - epoch - 1))}",
                  flush=True)
            if dead_run_warning(test_stats):
                print(dead_run_warning(test_stats), flush=True)
            with open(log_path, "a") as f:  # log first: a crash before the checkpoint leaves a line to trim
                f.write(json.dumps(entry) + "\n")
            save_checkpoint(epoch + 1)
        if args.epochs == 0 and rank == 0:  # the untrained model: analyze.py sets it beside pretrained ones
            save_checkpoint(0)
        if world_size > 1:  # evaluation and fine-tuning run in rank 0 alone: the same numbers as one process
            dist.destroy_process_group()
            if rank != 0:
                return

        # evaluation: reconstruction, then the probes beside their baselines
        results = evaluate(model, data.test_x, batch_size, args.seed, device)
        protocols = [p for p in args.eval.split(",") if p]
        if {"linear", "knn"} & set(protocols):
            t0 = time.time()
            torch.manual_seed(args.seed)
            untrained = model_cls(config).to(device)  # the initial weights of this run: the same seed, the same draw
            probes, sizes = probe_features(model, untrained, data, protocols, batch_size, device)
            results.update(probes)
            print(f"probes on frozen features in {time.time() - t0:.1f}s\n{probe_table(probes, sizes, feature_name(args.model, dataclasses.asdict(config)))}")

        # fine-tuning
        if "finetune" in protocols:
            torch.manual_seed(args.seed)  # the same head, order and drop path whatever else --eval ran first
            encoder_lr = args.finetune_lr if args.finetune_lr is not None else args.head_lr
            accuracy, tuned, head = finetune(model, data, args.finetune_epochs, batch_size, args.head, args.head_lr,
                                             encoder_lr, args.weight_decay, device)
            results["finetune_acc"] = accuracy
            save_atomic({"model": tuned.state_dict(), "head": head.state_dict(), "head_kind": args.head,
                         "model_name": args.model, "config": dataclasses.asdict(config), "args": vars(args)},
                        os.path.join(out_dir, "finetune.pt"))
            print(f"fine-tune accuracy {accuracy:.4f} (model and head in finetune.pt)")

        # results
        results.update({"model": args.model, "dataset": args.dataset, "epochs": args.epochs,
                        "train_size": len(data.train_x), "parameters": n_params})
        if args.resume and os.path.exists(results_path):  # e.g. --resume --eval finetune keeps linear and knn
            with open(results_path) as f:
                results = {**json.load(f), **results}
        with open(results_path + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(results_path + ".tmp", results_path)
        print("results: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items() if isinstance(v, float) and
                                      not k.endswith("_acc")))
        if dead_run_warning(results):
            print(dead_run_warning(results))
        print(f"wrote {out_dir}/ckpt.pt, log.jsonl, results.json" + (", finetune.pt" if "finetune" in protocols else ""))
        if args.model == "mae" and "finetune" not in protocols:
            print(finetune_hint(out_dir, args.finetune_epochs, epoch_seconds, config.mask_ratio,
                                    config.finetune_mask_ratio))


def finetune_hint(out_dir, finetune_epochs, epoch_seconds, mask_ratio, finetune_mask_ratio):
    """Where the MAE shines: fine-tuning, beside the same ViT trained from scratch."""
    words = ([w for w in sys.argv if w not in ("--overwrite", "--resume")] if sys.argv[0].endswith("train.py")
             else ["train.py", "..."])
    if "--eval" in words:  # the protocols asked for now give way to finetune
        del words[words.index("--eval"):words.index("--eval") + 2]
    command = "python " + shlex.join(words)
    cost = ""
    if epoch_seconds:
        # fine-tuning runs the encoder on the patches it keeps (all, unless --finetune-mask-ratio) instead of
        # the visible share, and no decoder: a step costs about 0.7 of a pretraining step per token
        finetune_seconds = 0.7 * epoch_seconds * (1 - finetune_mask_ratio) / (1 - mask_ratio) * finetune_epochs
        cost = f", about {format_seconds(finetune_seconds)} here"
    return (f"MAE features are made to be fine-tuned ({finetune_epochs} epochs{cost}):\n"
            f"  {command} --resume --eval finetune\n"
            f"and the same ViT from scratch, for what pretraining is worth:\n"
            f"  {command} --epochs 0 --eval finetune --out-dir {shlex.quote(out_dir + '-scratch')}")


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
