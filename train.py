"""
Train an autoencoder, then measure what its features are worth.

    python train.py --model dae --dataset mnist --train-size 4000 --epochs 5   # under a minute on a CPU
    python train.py --model mae --dataset mnist                              # all 60000 digits

A run, in the order main() at the end of this file tells it (the directory's housekeeping is runs.py's):
1. flags, checked before any work starts (a bad one is one line); data (data.py), loaded once.
2. model, and AdamW with its recipe: betas, weight decay, linear warm-up, cosine decay.
3. pretraining: the epoch loop written out, each step forward, loss, backward, AdamW step; after every
   epoch a line, log.jsonl and ckpt.pt, so a run can be stopped and resumed (--resume).
4. evaluation: reconstruction on the test set, then a linear probe and k-NN on frozen features (--eval),
   each beside the same probes on raw pixels and on the untrained encoder.
5. fine-tuning (--eval finetune): the encoder and a new head trained on the labels.
Writes ckpt.pt, log.jsonl, results.json (and finetune.pt) to --out-dir (default out/<model>-<dataset>).
"""
import argparse
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
from data import DATASETS, batches, load_data, to_float
from runs import (MODELS, ROW_NAMES, Parser, build_config, check_device, check_out_dir, count, dead_run_warning,
                  feature_name, format_seconds, fraction, image_shape, int_tuple, load_checkpoint, non_negative,
                  owned_out_dir, positive, positive_int, probe_table, resume_from, run_main, save_atomic,
                  save_results, show_progress, start_process, trim_log)

# a default run sees at most this many images: 20 epochs of a few thousand, 5 of 60000 (RESULTS.md: the
# probes against images seen), so that `--model mae --dataset mnist` ends within 15 minutes on 2 CPU cores
IMAGES_PER_RUN = 300_000

# -----------------------------------------------------------------------------
# flags

AE_FAMILY = ("ae", "dae", "vae", "mcae")
# the model settings: each flag sets the config field of its name (or dest), for the models named, and --help
# shows their configs' defaults
MODEL_FLAGS = [
    ("--arch", AE_FAMILY, dict(choices=["mlp", "conv"], help="fully connected layers or stride-2 convolutions")),
    ("--hidden", AE_FAMILY, dict(type=int_tuple, help="mlp: hidden widths, e.g. 512,256 or 656,512,256,128")),
    ("--latent-dim", AE_FAMILY, dict(type=positive_int, help="size of the latent vector (mlp, and the vae)")),
    ("--conv-channels", AE_FAMILY, dict(type=int_tuple, dest="channels", metavar="C1,C2,..",
                                        help="conv: channels of each stride-2 conv")),
    ("--latent-channels", AE_FAMILY, dict(type=positive_int, help="conv: channels of the latent map, e.g. 8 -> "
                                          "8x3x3 = 72 values on 28x28")),
    ("--l1", ("ae", "dae", "mcae"), dict(type=non_negative, help="weight of an L1 penalty on the latent code")),
    ("--noise-std", ("dae",), dict(type=non_negative, help="std of the Gaussian noise; variance 0.1 = std 0.316")),
    ("--beta", ("vae",), dict(type=non_negative, help="weight of the KL term")),
    ("--mask-type", ("mcae",), dict(choices=["pixel", "block"], help="hide single pixels or square blocks")),
    ("--block-size", ("mcae",), dict(type=positive_int, help="side of a hidden block")),
    ("--mask-ratio", ("mcae", "mae"), dict(type=fraction, help="fraction of the image hidden")),
    ("--patch-size", ("mae",), dict(type=positive_int, help="side of a square patch, a divisor of the image size")),
    ("--embed-dim", ("mae",), dict(type=positive_int, help="encoder width")),
    ("--depth", ("mae",), dict(type=positive_int, help="encoder blocks")),
    ("--num-heads", ("mae",), dict(type=positive_int, help="encoder attention heads")),
    ("--decoder-embed-dim", ("mae",), dict(type=positive_int, help="decoder width")),
    ("--decoder-depth", ("mae",), dict(type=positive_int, help="decoder blocks")),
    ("--decoder-conv", ("mae",), dict(type=count, metavar="K", help="a K x K conv over the decoder's grid of patches, "
                                      "K odd: sharper reconstructions sooner, poorer features; 0 = the paper's")),
    ("--finetune-mask-ratio", ("mae",), dict(type=fraction, help="fine-tuning: fraction of each training image's "
                                             "patches dropped, as in pretraining")),
    ("--norm-pix-loss", ("mae",), dict(action="store_true", default=None, help="predict each patch normalised by its "
                                       "mean and std: better features; its pictures and PSNR borrow the true ones")),
]


def field_of(flag, keywords):
    return keywords.get("dest", flag[2:].replace("-", "_"))  # --latent-dim -> latent_dim


def parse_args(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--model", required=True, choices=MODELS, help="which autoencoder")
    g.add_argument("--dataset", required=True, choices=DATASETS, help="which images")
    g.add_argument("--data-dir", default="./data", help="where torchvision finds the datasets; for folder, the "
                   "folder of class sub-folders (default: ./data)")
    g.add_argument("--out-dir", help="where ckpt.pt, log.jsonl, results.json go (default: out/<model>-<dataset>)")
    g.add_argument("--train-size", type=count, default=0, help="use the first N training images; 0 = all (default: 0)")
    g.add_argument("--epochs", type=count, help=f"pretraining epochs; 0 = keep the untrained model, the "
                   f"from-scratch baseline of fine-tuning (default: 20, fewer where that would be over "
                   f"{IMAGES_PER_RUN} images: 5 on 60000)")
    g.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per step, over all processes under torchrun (default: 64)")
    g.add_argument("--lr", type=positive, default=1e-3, help="peak learning rate of AdamW (default: 1e-3)")
    g.add_argument("--weight-decay", type=non_negative, help="AdamW weight decay (default: mae 0.05, others 0)")
    g.add_argument("--seed", type=int, default=0, help="seed of the weights, image order, noise and masks (default: 0)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N; a CPU run uses every core (OMP_NUM_THREADS=k for fewer) "
                   "(default: %(default)s)")
    g.add_argument("--image-size", type=positive_int, help="folder: images are resized to this square (default: 32)")
    g.add_argument("--channels", type=int, choices=[1, 3], dest="image_channels",
                   help="folder: 1 = grey, 3 = RGB (default: 3)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its ckpt.pt")
    g.add_argument("--overwrite", action="store_true", help="start over in an --out-dir that holds a run")

    g = p.add_argument_group("what the features are worth")
    g.add_argument("--eval", default="linear,knn", help="comma list of linear (a linear probe on frozen features), "
                   "knn (20 nearest neighbours), finetune (encoder and head trained on the labels); '' for none "
                   "(default: linear,knn)")
    g.add_argument("--probe-size", type=positive_int, default=10000, help="the probes fit on at most N training "
                   "images, the same N for every row; all test images are scored (default: 10000)")
    g.add_argument("--finetune-epochs", type=positive_int, default=10, help="epochs of fine-tuning (default: 10)")
    g.add_argument("--head", choices=["linear", "mlp"], default="linear", help="fine-tuning head: linear, or mlp "
                   "= the DAE-vs-MAE study's 3 layers with BatchNorm/ReLU/dropout (default: linear)")
    g.add_argument("--head-lr", type=positive, default=1e-3, help="fine-tuning lr of the head (default: 1e-3)")
    g.add_argument("--finetune-lr", type=positive, help="fine-tuning lr of the encoder (default: --head-lr)")

    g = p.add_argument_group("model settings, each for the models in brackets")
    for flag, models, keywords in MODEL_FLAGS:
        by_default = {}  # each config's default -> the models that have it: '32', or 'ae/dae/mcae 100; vae 32'
        for m in models:
            by_default.setdefault(getattr(MODELS[m][1], field_of(flag, keywords)), []).append(m)
        defaults = "; ".join(f"{'/'.join(ms)} {v}" if len(by_default) > 1 else str(v) for v, ms in by_default.items())
        defaults = defaults.replace(", ", ",").replace("(", "").replace(")", "")  # (512, 256) -> 512,256
        g.add_argument(flag, **{**keywords, "help": f"[{', '.join(models)}] {keywords['help']} (default: {defaults})"})

    args = p.parse_args(argv)
    for flag, models, keywords in MODEL_FLAGS:
        if getattr(args, field_of(flag, keywords)) is not None and args.model not in models:
            p.error(f"{flag} is for --model {' or '.join(models)}, not {args.model}")
    if args.dataset != "folder" and (args.image_size or args.image_channels):
        p.error(f"--image-size and --channels are for --dataset folder; {args.dataset} has its own size")
    unknown = set(name for name in args.eval.split(",") if name) - {"linear", "knn", "finetune"}
    if unknown:
        p.error(f"--eval: unknown protocol {', '.join(sorted(unknown))} (choose from linear, knn, finetune)")
    check_device(p, args.device)
    if args.weight_decay is None:
        args.weight_decay = RECIPES[args.model]["weight_decay"]
    args.out_dir = args.out_dir or os.path.join("out", f"{args.model}-{args.dataset}")
    # build the model once on the CPU, so a setting it cannot take (a patch size that does not divide
    # the image, too many heads for the width, nothing left visible) is refused before any work starts
    try:
        MODELS[args.model][0](build_config(args.model, vars(args), *image_shape(args.dataset, args.image_channels,
                                                                                args.image_size)))
    except ValueError as e:
        p.error(f"--model {args.model}: {e}")
    return args


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


@torch.no_grad()
def extract_features(encode, images, batch_size, device):
    """{name: (N, D) features} of uint8 images, a batch at a time; encode(x) -> {name: (B, ...)}."""
    features = {}
    for s in batches(len(images), batch_size):
        with autocast(device):
            for name, f in encode(to_float(images[s])).items():
                features.setdefault(name, []).append(f.float().flatten(1))
    return {name: torch.cat(f) for name, f in features.items()}


def probe_features(model, untrained, data, protocols, probe_size, seed, device):
    """linear_acc and knn_acc of the model's features, each beside the same probe on baselines: raw pixels
    (pixels_*), the same encoder at its initial weights (init_*: what pretraining bought) and, for the MAE,
    its map of patch tokens flattened (tokens_*). Every row fits on the same probe_size training images,
    drawn at random, and scores all test images. -> (results, {prefix: feature size})"""
    model.eval(), untrained.eval()

    def encode(x):  # every row's features of a batch (B, C, H, W), each encoder run once
        rows = {"pixels_": x, "init_": untrained.encode(x)}
        if hasattr(model, "encode_tokens"):  # the MAE: one pass gives its vector and its patch tokens
            h = model.encode_tokens(x)                             # (B, 1 + L, D), CLS first
            rows[""], rows["tokens_"] = model.pool(h), h[:, 1:]    # (B, D), (B, L, D)
        else:
            rows[""] = model.encode(x)
        return rows

    t0 = time.time()
    idx = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(seed))[:probe_size]
    print(f"  features of {len(idx)} training and {len(data.test_x)} test images ...", end=" ", flush=True)
    train_x, train_y = data.train_x[idx.to(data.train_x.device)], data.train_y[idx.to(data.train_y.device)]
    # batches of 64: a batch's activations stay in a CPU's caches, faster an image than batches of 256
    train_f, test_f = extract_features(encode, train_x, 64, device), extract_features(encode, data.test_x, 64, device)
    print(f"{time.time() - t0:.1f}s", flush=True)
    results, sizes = {}, {}
    for prefix in train_f:
        t0 = time.time()
        sizes[prefix] = train_f[prefix].shape[1]
        if "linear" in protocols:  # the patch tokens' probe: 100 L-BFGS steps hold most of its accuracy
            results[prefix + "linear_acc"] = metrics.linear_probe(train_f[prefix], train_y, test_f[prefix], data.test_y,
                                                                  max_iter=100 if prefix == "tokens_" else 500)
        if "knn" in protocols:
            results[prefix + "knn_acc"] = metrics.knn_accuracy(train_f[prefix], train_y, test_f[prefix], data.test_y)
        print(f"  probed {ROW_NAMES[prefix]} ({sizes[prefix]}-d) in {time.time() - t0:.1f}s", flush=True)
    model.train()
    return results, sizes


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
    """Fine-tune a copy of the model (ckpt.pt keeps the pretrained weights) with a new head on its features,
    by FINETUNE_RECIPE. -> (test accuracy, the fine-tuned model, the head)."""
    model, n = copy.deepcopy(model), len(data.train_x)
    dim = extract_features(lambda x: {"f": model.eval().encode(x)}, data.test_x[:2], 2, device)["f"].shape[1]
    head = make_head(head_kind, dim, len(data.classes)).to(device)
    # the decoder gets no gradient: AdamW leaves it untouched
    optimizer = torch.optim.AdamW([{"params": model.parameters(), "lr": encoder_lr},
                                   {"params": head.parameters(), "lr": head_lr}],
                                  betas=FINETUNE_RECIPE["betas"], weight_decay=weight_decay)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    steps_per_epoch = math.ceil(n / batch_size)
    for epoch in range(epochs):
        model.train(), head.train()
        perm = torch.randperm(n, device=data.train_x.device)
        if n % batch_size == 1:  # BatchNorm in a head cannot train on a last batch of one
            perm = perm[:-1]
        t0 = last_print = time.time()
        loss_sum = 0.0
        for i, s in enumerate(batches(len(perm), batch_size)):
            factor = lr_factor(epoch * steps_per_epoch + i, epochs * steps_per_epoch, FINETUNE_RECIPE["warmup"])
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * factor
            idx = perm[s]
            with autocast(device):
                logits = head(model.encode(data.train_batch(idx))).float()
            loss = F.cross_entropy(logits, data.train_y[idx], label_smoothing=FINETUNE_RECIPE["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            if time.time() - last_print > 15:
                show_progress("finetune", i + 1, steps_per_epoch, loss.item(), base_lrs[0] * factor,
                              (i + 1) * batch_size, t0)
                last_print = time.time()
        print(f"finetune epoch {epoch + 1}/{epochs} | loss {loss_sum.item() / (i + 1):.4f} | "
              f"{time.time() - t0:.1f}s", flush=True)
    model.eval(), head.eval()
    logits = extract_features(lambda x: {"logits": head(model.encode(x))}, data.test_x, batch_size, device)["logits"]
    return (logits.argmax(1) == data.test_y).float().mean().item(), model, head


# -----------------------------------------------------------------------------
# the recipe: AdamW, a linear warm-up over the first share of the steps, then a cosine decay to 0

CONV_RECIPE = dict(betas=(0.9, 0.999), weight_decay=0.0, warmup=0.0)
# the ViT as in the MAE paper: beta2 0.95 and weight decay 0.05 keep attention training stable, and a
# warm-up (a tenth of the run) keeps the first large gradients from wrecking the freshly initialised blocks
VIT_RECIPE = dict(betas=(0.9, 0.95), weight_decay=0.05, warmup=0.1)
RECIPES = {"ae": CONV_RECIPE, "dae": CONV_RECIPE, "vae": CONV_RECIPE, "mcae": CONV_RECIPE, "mae": VIT_RECIPE}
# fine-tuning, every model: AdamW's default betas (as the MAE paper fine-tunes) and a tenth of warm-up (the
# new head's first, large gradients would shake the pretrained layers); label smoothing 0.1: the
# cross-entropy aims at 0.9 for the label plus 0.1 spread over all classes (less overconfidence)
FINETUNE_RECIPE = dict(betas=(0.9, 0.999), warmup=0.1, label_smoothing=0.1)


def lr_factor(step, total_steps, warmup):
    """The learning rate at a step as a share of the peak: a linear rise over the first `warmup` share of
    the steps, then a cosine to 0. A function of the step alone, so a resumed run needs no scheduler state."""
    warmup_steps = round(warmup * total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def autocast(device):
    """bf16 autocast on CUDA (tensor cores; float32's range, so no loss scaling); float32 elsewhere: most
    CPUs emulate bf16 many times slower."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda")


# -----------------------------------------------------------------------------
# the run


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # data parallelism: torchrun starts one process per device and tells each its RANK and the WORLD_SIZE
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out_dir, device = args.out_dir, args.device
    ckpt_path, log_path = os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "log.jsonl")
    with owned_out_dir(out_dir, lock=rank == 0):  # rank 0 alone writes files
        check_out_dir(out_dir, args.resume, args.overwrite)
        device = start_process(device, rank, world_size)

        # data
        t0 = time.time()
        channels, size = image_shape(args.dataset, args.image_channels, args.image_size)
        data = load_data(args.dataset, args.data_dir, device, args.train_size, args.seed, size, channels)
        n, batch_size = len(data.train_x), args.batch_size
        print(f"data: {args.dataset}, {n} train / {len(data.test_x)} test images "
              f"{tuple(data.train_x.shape[1:])} on {device} in {time.time() - t0:.1f}s")

        # model; a resumed run keeps the settings it was trained with (--norm-pix-loss, --mask-ratio, ...)
        # unless a flag given now changes them
        model_cls = MODELS[args.model][0]
        ckpt = load_checkpoint(ckpt_path, args.model) if args.resume else None
        if args.epochs is None:  # a resumed run keeps its length; a new one sees at most IMAGES_PER_RUN images
            args.epochs = ckpt["args"]["epochs"] if ckpt else max(1, min(20, round(IMAGES_PER_RUN / n)))
        config = build_config(args.model, vars(args), channels, size, saved=ckpt["config"] if ckpt else None)
        torch.manual_seed(args.seed)
        model = model_cls(config).to(device)
        if hasattr(model, "init_output_bias"):  # AE family: the sigmoid decoder starts at the mean image
            model.init_output_bias(data.train_x.mean(dim=0, dtype=torch.float32) / 255)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {config}\n{n_params / 1e6:.2f}M parameters")

        # optimizer and its recipe: AdamW; the lr rises linearly over the first `warmup` share of the steps
        # to --lr, then falls to 0 on a cosine (lr_factor)
        recipe = RECIPES[args.model]
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=recipe["betas"],
                                      weight_decay=args.weight_decay)
        start_epoch = resume_from(ckpt, ckpt_path, model, optimizer) if ckpt else 0
        if rank == 0:
            trim_log(log_path, start_epoch)  # the log in step with the checkpoint
        steps_per_epoch = math.ceil(n / batch_size)
        total_steps = args.epochs * steps_per_epoch
        warmup = f"after {recipe['warmup'] * args.epochs:g} epochs of warm-up" if recipe["warmup"] else "from the start"
        where = (f"the CPU (threads: {torch.get_num_threads()})" if device == "cpu" else device) + (
            f" in each of {world_size} processes" if world_size > 1 else "")
        print(f"run: {args.epochs} epochs x {n} images = {args.epochs * n} images seen, batch {batch_size}, "
              f"on {where}\nrecipe: AdamW, lr {args.lr:g} {warmup}, then a cosine to 0; betas {recipe['betas']}, "
              f"weight decay {args.weight_decay:g}")

        def save_checkpoint(epoch):
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "model_name": args.model, "config": dataclasses.asdict(config), "args": vars(args)}, ckpt_path)

        # pretraining; under torchrun, DDP averages the gradients of all processes in backward(): every
        # process then takes the same AdamW step, so the weights stay identical without ever being sent
        net = DDP(model) if world_size > 1 else model
        for epoch in range(start_epoch, args.epochs):
            # everything random in an epoch (order, noise, masks) follows from (seed, epoch): a run resumed
            # after epoch k repeats exactly what the uninterrupted run did
            torch.manual_seed(args.seed * 1000 + epoch)
            model.train()
            perm = torch.randperm(n, device=data.train_x.device)
            t0 = last_print = time.time()
            sums = {}
            for i, s in enumerate(batches(n, batch_size)):
                lr = args.lr * lr_factor(epoch * steps_per_epoch + i, total_steps, recipe["warmup"])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = data.train_batch(perm[s][rank::world_size])  # this process's share of the batch
                with autocast(device):
                    loss, out = net(x)  # the model's forward: for the MAE embed, mask, encode, decode, loss
                if not torch.isfinite(loss):
                    kept = f"ckpt.pt keeps epoch {epoch}" if epoch > 0 else "nothing was saved"
                    raise FloatingPointError(f"loss became {loss.item()} at step {i + 1} of epoch {epoch + 1}; {kept}. "
                                             f"Try a lower --lr (now {args.lr}).")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                # the epoch's means of the loss and of the model's own scalars (the VAE's kl, ...), summed
                # as tensors on the device (the isfinite check above is the step's one read of the loss)
                for key, value in {"train_loss": loss, **{k: v for k, v in out.items() if v.ndim == 0}}.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().float()
                if time.time() - last_print > 15 or (epoch == 0 and i == 19):  # an early rate and eta, then every 15 s
                    show_progress("pretrain", i + 1, steps_per_epoch, loss.item(), lr, (i + 1) * batch_size, t0)
                    last_print = time.time()
            seconds = time.time() - t0
            if rank != 0:
                continue
            train_stats = {key: (value / steps_per_epoch).item() for key, value in sums.items()}
            test_stats = evaluate(model, data.test_x, batch_size, args.seed, device)
            # the log's line: the epoch's mean train loss, the test set's loss and scores (psnr_hidden: masked
            # models' fill-in alone), and the model's own scalars on both
            entry = {"epoch": epoch + 1, "lr": lr, "seconds": seconds, "train_loss": train_stats.pop("train_loss"),
                     **{k: test_stats[k] for k in ("test_loss", "psnr", "ssim", "psnr_hidden") if k in test_stats},
                     **train_stats, **{"test_" + key: test_stats[key] for key in train_stats}}
            extra = "".join(f" | {key} {value:.2f}" for key, value in train_stats.items())
            hidden = f" (hidden {entry['psnr_hidden']:.2f})" if "psnr_hidden" in entry else ""
            print(f"epoch {epoch + 1}/{args.epochs} | train {entry['train_loss']:.4f} | test {entry['test_loss']:.4f}"
                  f"{extra} | psnr {entry['psnr']:.2f} dB{hidden} | ssim {entry['ssim']:.3f} | lr {lr:.1e} | "
                  f"{n / seconds:.0f} img/s | {seconds:.1f}s | "
                  f"eta {format_seconds(seconds * (args.epochs - epoch - 1))}", flush=True)
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
            print(f"probes on frozen features of at most {args.probe_size} training images (--probe-size):")
            torch.manual_seed(args.seed)
            untrained = model_cls(config).to(device)  # the initial weights of this run: the same seed, the same draw
            probes, sizes = probe_features(model, untrained, data, protocols, args.probe_size, args.seed, device)
            results.update(probes)
            print(f"probes in {time.time() - t0:.1f}s\n"
                  f"{probe_table(probes, sizes, feature_name(args.model, dataclasses.asdict(config)))}")

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
                        "train_size": n, "parameters": n_params})
        results = save_results(results, os.path.join(out_dir, "results.json"), keep_old=args.resume)
        print("results: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items() if isinstance(v, float) and
                                      not k.endswith("_acc")))
        if dead_run_warning(results):
            print(dead_run_warning(results))
        print(f"wrote {out_dir}/ckpt.pt, log.jsonl, results.json{', finetune.pt' if 'finetune' in protocols else ''}")
        if args.model == "mae" and "finetune" not in protocols:
            print(finetune_hint(argv, out_dir, args.epochs))


def finetune_hint(argv, out_dir, epochs):
    """Where the MAE shines: fine-tuning, beside the same ViT trained from scratch; two commands to paste,
    each flag once."""
    words, skip = [], False
    for word in argv:  # the run's own flags, less those the two commands set
        name = word.split("=")[0]
        if skip or name in ("--resume", "--overwrite"):
            skip = False
            continue
        if name in ("--eval", "--epochs", "--out-dir"):
            skip = "=" not in word  # its value is the next word
            continue
        words.append(word)
    command = "python train.py " + shlex.join(words)
    return (f"MAE features are made to be fine-tuned; the pretrained encoder, then the same ViT from scratch:\n"
            f"  {command} --epochs {epochs} --out-dir {shlex.quote(out_dir)} --resume --eval finetune\n"
            f"  {command} --epochs 0 --out-dir {shlex.quote(out_dir + '-scratch')} --eval finetune")


if __name__ == "__main__":
    run_main(main, interrupted="interrupted: ckpt.pt keeps the last finished epoch; continue with the same command "
             "and --resume")
