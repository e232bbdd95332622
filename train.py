"""
Train an autoencoder, then measure what its features are worth.

    python train.py --model dae --dataset mnist --train-size 4000 --epochs 5   # under a minute on a CPU
    python train.py --model mae --dataset mnist                              # all 60000 digits

The file reads in the order of a run: the recipe (every number of training), the flags, the end of an
epoch, evaluation and probes, fine-tuning, and main(), which tells the run in steps: the model, built from
the flags (a bad one is one line); the data (data.py); pretraining, each step forward, loss, backward,
AdamW step, and after every epoch a line, log.jsonl and ckpt.pt (--resume continues a stopped run);
evaluation: reconstruction, then a linear probe and k-NN on frozen features beside raw pixels and the
untrained encoder; fine-tuning (--eval finetune). It writes ckpt.pt, log.jsonl, results.json (and
finetune.pt) to --out-dir; the directory's housekeeping (lock, safe saves, checkpoints, log) is runs.py's.
"""
import argparse
import copy
import dataclasses
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import metrics
import runs
from data import DATASETS, batches, load_data, to_float

# -----------------------------------------------------------------------------
# the recipe: every number of training in one place (--batch-size, --lr, --epochs, --weight-decay override
# them), and the precision it runs in (--dtype)

BATCH_SIZE = 64                # images per step, over all processes under torchrun
LR = 1e-3                      # the peak learning rate
MAX_EPOCHS = 20                # a run's length: 20 epochs, or fewer where that would see more than
IMAGES_PER_RUN = 300_000       # this many images (5 epochs of 60000), so a first run on all of MNIST stays short
# AdamW; the lr rises linearly over the first `warmup` share of the steps, then falls to 0 on a cosine
CONV_RECIPE = dict(betas=(0.9, 0.999), weight_decay=0.0, warmup=0.0, finetune_weight_decay=0.0)
# the ViT as in the MAE paper: beta2 0.95 and weight decay 0.05 keep attention training stable, and a
# warm-up (a tenth of the run) keeps the first large gradients from wrecking the freshly initialised blocks
VIT_RECIPE = dict(betas=(0.9, 0.95), weight_decay=0.05, warmup=0.1, finetune_weight_decay=0.05)
RECIPES = {"ae": CONV_RECIPE, "dae": CONV_RECIPE, "vae": CONV_RECIPE, "mcae": CONV_RECIPE, "mae": VIT_RECIPE}
# fine-tuning, every model: AdamW's default betas (as the MAE paper fine-tunes), the weight decay of the
# recipe above (finetune_weight_decay), a tenth of warm-up (the new head's first, large gradients would shake
# the pretrained layers), label smoothing 0.1: the target is 0.9 on the label, 0.1 spread over all classes
FINETUNE_RECIPE = dict(betas=(0.9, 0.999), warmup=0.1, label_smoothing=0.1)


def run_length(n_images):
    """Default epochs for a training set of n_images: MAX_EPOCHS, at most IMAGES_PER_RUN images seen."""
    return max(1, min(MAX_EPOCHS, round(IMAGES_PER_RUN / n_images)))


def lr_factor(step, total_steps, warmup):
    """The learning rate at a step as a share of the peak: a linear rise over the first `warmup` share of
    the steps, then a cosine to 0. A function of the step alone, so a resumed run needs no scheduler state."""
    warmup_steps = round(warmup * total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def pick_dtype(dtype, device):
    """--dtype auto, as nanoGPT: bfloat16 on CUDA cards of compute capability 8.0 and up (A100, RTX 30xx), float16
    with a GradScaler on older ones (T4, V100), which emulate bfloat16; float32 on CPUs, which emulate both."""
    if dtype != "auto":
        return dtype
    if torch.device(device).type != "cuda":
        return "float32"
    major, _ = torch.cuda.get_device_capability(device)
    return "bfloat16" if major >= 8 else "float16"


def autocast(device, dtype):
    """The forward pass in dtype where it is safe (matmuls, convolutions); losses are computed in float32."""
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype), enabled=dtype != "float32")


def grad_scaler(device, dtype):
    """float16 ends at 65504 and small gradients underflow to 0: the GradScaler scales the loss up before backward
    and the gradients down again, skipping a step that overflowed. Disabled (plain calls) for the other dtypes."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=dtype == "float16")


def adamw(params, lr, betas, weight_decay, device):
    """AdamW; fused on a GPU, one kernel for all parameters instead of a few for each."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay,
                             fused=torch.device(device).type == "cuda")


def feature_batch_size(device, cpu_batch_size):
    """Images per batch of evaluation and feature extraction: 1024 on a GPU (small batches leave it idle),
    cpu_batch_size on a CPU (a batch's activations then stay in its caches)."""
    return 1024 if torch.device(device).type == "cuda" else cpu_batch_size


# -----------------------------------------------------------------------------
# flags

AE_FAMILY = ("ae", "dae", "vae", "mcae")
# the model settings: each flag sets the config field of its name (or dest), for the models named, and --help
# shows their configs' defaults
MODEL_FLAGS = [
    ("--arch", AE_FAMILY, dict(choices=["mlp", "conv", "linear"], help="layers: fully connected, convolutions, "
                               "or one linear map each way (as PCA; not the vae)")),
    ("--hidden", AE_FAMILY, dict(type=runs.int_tuple, help="mlp: hidden widths, e.g. 512,256 or 656,512,256,128")),
    ("--latent-dim", AE_FAMILY, dict(type=runs.positive_int, help="size of the latent vector (mlp, linear, vae)")),
    ("--conv-channels", AE_FAMILY, dict(type=runs.int_tuple, dest="channels", metavar="C1,C2,..",
                                        help="conv: channels of each stride-2 conv")),
    ("--latent-channels", AE_FAMILY, dict(type=runs.positive_int, help="conv: channels of the latent map (8: 8x3x3)")),
    ("--l1", ("ae", "dae", "mcae"), dict(type=runs.non_negative, help="weight of an L1 penalty on the latent code")),
    ("--noise-std", ("dae",), dict(type=runs.non_negative, help="std of the Gaussian noise; variance 0.1 = std 0.316")),
    ("--beta", ("vae",), dict(type=runs.non_negative, help="weight of the KL term")),
    ("--mask-type", ("mcae",), dict(choices=["pixel", "block"], help="hide single pixels or square blocks")),
    ("--block-size", ("mcae",), dict(type=runs.positive_int, help="side of a hidden block")),
    ("--mask-ratio", ("mcae", "mae"), dict(type=runs.fraction, help="fraction of the image hidden")),
    ("--patch-size", ("mae",), dict(type=runs.positive_int, help="side of a square patch, dividing the image")),
    ("--embed-dim", ("mae",), dict(type=runs.positive_int, help="encoder width")),
    ("--depth", ("mae",), dict(type=runs.positive_int, help="encoder blocks")),
    ("--num-heads", ("mae",), dict(type=runs.positive_int, help="encoder attention heads")),
    ("--decoder-embed-dim", ("mae",), dict(type=runs.positive_int, help="decoder width")),
    ("--decoder-depth", ("mae",), dict(type=runs.positive_int, help="decoder blocks")),
    ("--decoder-conv", ("mae",), dict(type=runs.count, metavar="K", help="a K x K conv (K odd) over the decoder's "
                                      "patches: sharper pictures sooner, poorer features; 0 = none")),
    ("--finetune-mask-ratio", ("mae",), dict(type=runs.fraction, help="fine-tuning: share of patches dropped")),
    # on or off (--no-norm-pix-loss): a resumed run can change it either way
    ("--norm-pix-loss", ("mae",), dict(action=argparse.BooleanOptionalAction, help="predict each patch normalised "
                                       "by its mean and std: better features; its pictures borrow the true ones")),
]


def parse_args(argv=None):
    p = runs.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--model", required=True, choices=runs.MODELS, help="which autoencoder")
    g.add_argument("--dataset", required=True, choices=DATASETS, help="which images")
    g.add_argument("--data-dir", default="./data", help="where torchvision finds the datasets; for folder, the "
                   "folder of class sub-folders (default: ./data)")
    g.add_argument("--out-dir", help="where ckpt.pt, log.jsonl, results.json go (default: out/<model>-<dataset>)")
    g.add_argument("--train-size", type=runs.count, default=0, help="the first N training images; 0 = all (default: 0)")
    g.add_argument("--epochs", type=runs.count, help=f"pretraining epochs; 0 = keep the untrained model, the "
                   f"from-scratch baseline of fine-tuning (default: {MAX_EPOCHS}, fewer where that would be over "
                   f"{IMAGES_PER_RUN} images: {run_length(60000)} on 60000)")
    g.add_argument("--batch-size", type=runs.positive_int, default=BATCH_SIZE,
                   help=f"images per step, over all processes under torchrun (default: {BATCH_SIZE})")
    g.add_argument("--lr", type=runs.positive, default=LR, help=f"peak learning rate of AdamW (default: {LR:g})")
    g.add_argument("--weight-decay", type=runs.non_negative, help=f"AdamW weight decay of pretraining (default: "
                   f"mae {VIT_RECIPE['weight_decay']}, others {CONV_RECIPE['weight_decay']:g})")
    g.add_argument("--seed", type=int, default=0, help="seed of the weights, image order, noise and masks (default: 0)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N; a CPU run uses every core (OMP_NUM_THREADS=k for fewer) "
                   "(default: %(default)s)")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto", help="precision "
                   "of the forward pass; auto: bfloat16 on CUDA cards of compute capability 8.0 and up, float16 "
                   "with loss scaling on older ones (T4, V100), float32 on the CPU (default: auto)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model, fusing a step's small kernels: "
                   "a small ViT's GPU step is hundreds of tiny launches; on a CPU, mostly compile time (default: off)")
    g.add_argument("--image-size", type=runs.positive_int, help="folder: images resized to this square (default: 32)")
    g.add_argument("--channels", type=int, choices=[1, 3], dest="image_channels",
                   help="folder: 1 = grey, 3 = RGB (default: 3)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its ckpt.pt")
    g.add_argument("--overwrite", action="store_true", help="start over in an --out-dir that holds a run")

    g = p.add_argument_group("what the features are worth")
    g.add_argument("--eval", default="linear,knn", help="comma list of linear (a linear probe on frozen features), "
                   "knn (20 nearest neighbours), finetune (encoder and head trained on the labels); '' for none "
                   "(default: linear,knn)")
    g.add_argument("--probe-size", type=runs.positive_int, default=10000, help="the probes fit on at most N "
                   "training images, the same N for every row; all test images are scored (default: 10000)")
    g.add_argument("--finetune-epochs", type=runs.positive_int, default=10, help="epochs of fine-tuning (default: 10)")
    g.add_argument("--head", choices=["linear", "mlp"], default="linear", help="fine-tuning head: linear, or mlp "
                   "= the DAE-vs-MAE study's 3 layers with BatchNorm/ReLU/dropout (default: linear)")
    g.add_argument("--head-lr", type=runs.positive, default=1e-3, help="fine-tuning lr of the head (default: 1e-3)")
    g.add_argument("--finetune-lr", type=runs.positive, help="fine-tuning lr of the encoder (default: --head-lr)")

    runs.add_model_flags(p.add_argument_group("model settings, each for the models in brackets"), MODEL_FLAGS)
    args = p.parse_args(argv)
    runs.check_flags(p, vars(args), MODEL_FLAGS)
    if args.dataset != "folder" and (args.image_size or args.image_channels):
        p.error(f"--image-size and --channels are for --dataset folder; {args.dataset} has its own size")
    unknown = set(name for name in args.eval.split(",") if name) - {"linear", "knn", "finetune"}
    if unknown:
        p.error(f"--eval: unknown protocol {', '.join(sorted(unknown))} (choose from linear, knn, finetune)")
    args.out_dir = args.out_dir or os.path.join("out", f"{args.model}-{args.dataset}")
    return args


# -----------------------------------------------------------------------------
# the end of an epoch


def report_epoch(epoch, epochs, sums, steps, seconds, n_images, lr, evaluate_now, log_path):
    """The epoch's means of the training scalars, an evaluation on the test set (evaluate_now(), evaluate
    below), its line printed and appended to log.jsonl; -> the evaluation. A loss that became NaN or inf
    stops the run before ckpt.pt is overwritten."""
    train_stats = {key: value / steps for key, value in zip(sums, torch.stack(list(sums.values())).tolist())}
    runs.check_finite(train_stats["train_loss"], epoch)
    test_stats = evaluate_now()
    # the log's line: the epoch's mean train loss, the test set's loss and scores (psnr_hidden: masked
    # models' fill-in alone), and the model's own scalars on both
    entry = {"epoch": epoch + 1, "lr": lr, "seconds": seconds, "train_loss": train_stats.pop("train_loss"),
             **{k: test_stats[k] for k in ("test_loss", "psnr", "ssim", "psnr_hidden") if k in test_stats},
             **train_stats, **{"test_" + key: test_stats[key] for key in train_stats}}
    extra = "".join(f" | {key} {value:.2f}" for key, value in train_stats.items())
    hidden = f" (hidden {entry['psnr_hidden']:.2f})" if "psnr_hidden" in entry else ""
    print(f"epoch {epoch + 1}/{epochs} | train {entry['train_loss']:.4f} | test {entry['test_loss']:.4f}{extra} | "
          f"psnr {entry['psnr']:.2f} dB{hidden} | ssim {entry['ssim']:.3f} | lr {lr:.1e} | {n_images / seconds:.0f} "
          f"img/s | {seconds:.1f}s | eta {runs.format_seconds(seconds * (epochs - epoch - 1))}", flush=True)
    if runs.dead_run_warning(test_stats):
        print(runs.dead_run_warning(test_stats), flush=True)
    with open(log_path, "a") as f:  # log first: a crash before the checkpoint leaves a line to trim
        f.write(json.dumps(entry) + "\n")
    return test_stats


# -----------------------------------------------------------------------------
# evaluation: reconstruction on the test set, and what the features are worth


@torch.no_grad()
def evaluate(model, test_x, batch_size, seed, device, dtype):
    """Test loss, reconstruction quality and every scalar the model reports, averaged over the test set.
    Noise and masks are drawn from a fixed seed, so two evaluations of the same weights agree. The sums stay
    on the device and are read once, at the end."""
    model.eval()
    sums = {}
    with torch.random.fork_rng(devices=[test_x.device] if test_x.is_cuda else []):
        torch.manual_seed(seed)
        for s in batches(len(test_x), batch_size):
            x = to_float(test_x[s])
            with autocast(device, dtype):
                loss, out = model(x)
            recon = out["recon"].float()
            # the model's own scalars first (the VAE's kl, ...), so that a metric of the same name wins
            per_image = {
                **{k: v.float().expand(len(x)) for k, v in out.items() if v.ndim == 0},
                "test_loss": loss.float().expand(len(x)),
                "mse": metrics.mse(recon, x), "l1": metrics.l1(recon, x),
                "psnr": metrics.psnr(recon, x), "ssim": metrics.ssim(recon, x),
                # how much the reconstructions differ from image to image: ~0 when the model gives the
                # same picture (all black, the mean image) whatever it is shown
                "recon_spread": recon.flatten(1).std(dim=0, correction=0).mean().expand(len(x)),
            }
            if out["input"] is not x:  # noisy or masked: the corrupted input itself, the baseline to beat
                per_image["psnr_input"] = metrics.psnr(out["input"].float(), x)
            if "mask" in out:  # masked models: how well the hidden pixels were filled
                psnr_hidden = metrics.hidden_psnr(recon, x, out["mask"])  # NaN: an image with nothing hidden
                per_image["psnr_hidden"] = torch.where(psnr_hidden.isnan(), psnr_hidden.nanmean(), psnr_hidden)
            for key, value in per_image.items():
                sums[key] = sums.get(key, 0.0) + value.double().sum()
    model.train()
    totals = torch.stack(list(sums.values())).tolist()  # the one read from the device
    # NaN left: nothing was hidden in any image (an MCAE at mask ratio 0), so there is no hidden PSNR
    return {key: total / len(test_x) for key, total in zip(sums, totals) if not math.isnan(total)}


@torch.no_grad()
def extract_features(encode, images, batch_size, device, dtype):
    """{name: (N, D) features} of uint8 images, a batch at a time; encode(x) -> {name: (B, ...)}."""
    features = {}
    for s in batches(len(images), batch_size):
        with autocast(device, dtype):
            for name, f in encode(to_float(images[s])).items():
                features.setdefault(name, []).append(f.float().flatten(1))
    return {name: torch.cat(f) for name, f in features.items()}


def probe(model, model_name, config, data, protocols, probe_size, seed, device, dtype):
    """linear_acc and knn_acc of the model's features, each beside the same probe on baselines: raw pixels
    (pixels_*), the same encoder at its initial weights (init_*: what pretraining bought) and, for the MAE,
    its map of patch tokens flattened (tokens_*). Every row fits on the same probe_size training images,
    drawn at random, and scores all test images. Printed as a table; -> results."""
    print(f"probes on frozen features of at most {probe_size} training images (--probe-size):")
    t_start = time.time()
    torch.manual_seed(seed)
    untrained = type(model)(config).to(device).eval()  # this run's initial weights: the same seed, the same draw
    model.eval()

    def encode(x):  # every row's features of a batch (B, C, H, W), each encoder run once
        rows = {"pixels_": x, "init_": untrained.encode(x)}
        if hasattr(model, "encode_tokens"):  # the MAE: one pass gives its vector and its patch tokens
            h = model.encode_tokens(x)                             # (B, 1 + L, D), CLS first
            rows[""], rows["tokens_"] = model.pool(h), h[:, 1:]    # (B, D), (B, L, D)
        else:
            rows[""] = model.encode(x)
        return rows

    t0 = time.time()
    # drawn on the CPU by a generator of its own: the same images whatever the device
    idx = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(seed), device="cpu")[:probe_size]
    print(f"  features of {len(idx)} training and {len(data.test_x)} test images ...", end=" ", flush=True)
    train_x, train_y = data.train_x[idx.to(data.train_x.device)], data.train_y[idx.to(data.train_y.device)]
    batch_size = feature_batch_size(device, 64)
    train_f = extract_features(encode, train_x, batch_size, device, dtype)
    test_f = extract_features(encode, data.test_x, batch_size, device, dtype)
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
        print(f"  probed {runs.ROW_NAMES[prefix]} ({sizes[prefix]}-d) in {time.time() - t0:.1f}s", flush=True)
    model.train()
    print(f"probes in {time.time() - t_start:.1f}s\n"
          f"{runs.probe_table(results, sizes, model_name, dataclasses.asdict(config))}")
    return results


# -----------------------------------------------------------------------------
# fine-tuning: the encoder and a new head trained together on the labels


def make_head(kind, dim, num_classes):
    if kind == "linear":
        return nn.Linear(dim, num_classes)
    # the DAE-vs-MAE study's DAE head: three linear layers with normalisation, ReLU and dropout between them
    return nn.Sequential(nn.Linear(dim, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(128, num_classes))


def finetune(model, data, epochs, batch_size, head_kind, head_lr, encoder_lr, weight_decay, device, dtype):
    """Fine-tune a copy of the model (ckpt.pt keeps the pretrained weights) with a new head on its features,
    by FINETUNE_RECIPE. -> (test accuracy, the fine-tuned model, the head)."""
    model, n = copy.deepcopy(model), len(data.train_x)
    dim = extract_features(lambda x: {"f": model.eval().encode(x)}, data.test_x[:2], 2, device, dtype)["f"].shape[1]
    head = make_head(head_kind, dim, len(data.classes)).to(device)
    # the decoder gets no gradient: AdamW leaves it untouched
    optimizer = adamw([{"params": model.parameters(), "lr": encoder_lr}, {"params": head.parameters(), "lr": head_lr}],
                      head_lr, FINETUNE_RECIPE["betas"], weight_decay, device)
    scaler = grad_scaler(device, dtype)
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
            with autocast(device, dtype):
                logits = head(model.encode(data.train_batch(idx))).float()
            loss = F.cross_entropy(logits, data.train_y[idx], label_smoothing=FINETUNE_RECIPE["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach()
            if time.time() - last_print > 15:
                runs.show_progress("finetune", i + 1, steps_per_epoch, loss.item(), base_lrs[0] * factor,
                                   (i + 1) * batch_size, t0)
                last_print = time.time()
        print(f"finetune epoch {epoch + 1}/{epochs} | loss {loss_sum.item() / (i + 1):.4f} | "
              f"{time.time() - t0:.1f}s", flush=True)
    model.eval(), head.eval()
    # the test logits through extract_features: evaluation's batches and precision, no gradients kept
    logits = extract_features(lambda x: {"logits": head(model.encode(x))}, data.test_x,
                              feature_batch_size(device, batch_size), device, dtype)["logits"]
    accuracy = (logits.argmax(1) == data.test_y).float().mean().item()
    print(f"fine-tune accuracy {accuracy:.4f} (model and head in finetune.pt)")
    return accuracy, model, head


# -----------------------------------------------------------------------------
# the run


def main(argv=None):
    args = parse_args(argv)
    # data parallelism: torchrun starts one process per device and tells each its RANK and the WORLD_SIZE
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out_dir = args.out_dir
    ckpt_path, log_path = os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "log.jsonl")
    with runs.owned_out_dir(out_dir, args.resume, args.overwrite, lock=rank == 0):  # rank 0 alone writes files
        device = runs.start_process(args.device, rank, world_size)
        dtype = pick_dtype(args.dtype, device)

        # model, before any data: a bad setting is one line at once; --resume keeps the trained settings
        ckpt = runs.load_checkpoint(ckpt_path, args.model) if args.resume else None
        torch.manual_seed(args.seed)
        model = runs.build_model(args.model, vars(args), saved=ckpt["config"] if ckpt else None).to(device)
        config = model.config
        n_params = sum(p.numel() for p in model.parameters())

        # data
        data = load_data(args.dataset, args.data_dir, device, args.train_size, args.seed, config.image_size,
                         config.in_channels)
        n, batch_size = len(data.train_x), args.batch_size
        if hasattr(model, "init_output_bias"):  # AE family: the sigmoid decoder starts at the mean image
            model.init_output_bias(data.train_x.mean(dim=0, dtype=torch.float32) / 255)
        print(f"model: {config}\n{n_params / 1e6:.2f}M parameters")

        # optimizer and its recipe
        recipe = RECIPES[args.model]
        weight_decay = recipe["weight_decay"] if args.weight_decay is None else args.weight_decay
        optimizer = adamw(model.parameters(), args.lr, recipe["betas"], weight_decay, device)
        scaler = grad_scaler(device, dtype)
        start_epoch = runs.start_from(ckpt, ckpt_path, log_path, model, optimizer, scaler, rank)
        if args.epochs is None:  # a resumed run keeps its length
            args.epochs = ckpt["args"]["epochs"] if ckpt else run_length(n)
        steps_per_epoch, total_steps = math.ceil(n / batch_size), args.epochs * math.ceil(n / batch_size)
        print(runs.describe_run(args.epochs, n, batch_size, device, world_size, dtype, args.compile, args.lr,
                                recipe, weight_decay))

        def save_checkpoint(epoch):  # as CPU tensors (runs.save_atomic): a plain torch.load reads it anywhere
            runs.save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                              "scaler": scaler.state_dict(), "model_name": args.model,
                              "config": dataclasses.asdict(config), "args": vars(args)}, ckpt_path)

        # pretraining; under torchrun DDP averages all processes' gradients: the same step keeps the weights equal
        results = None  # the last epoch's evaluation
        net = torch.compile(model) if args.compile else model
        if world_size > 1:  # the positional buffers are fixed: nothing to broadcast every step
            net = DDP(net, device_ids=[torch.device(device).index] if device.startswith("cuda") else None,
                      broadcast_buffers=False)
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
                with autocast(device, dtype):
                    loss, out = net(x)  # the model's forward: for the MAE embed, mask, encode, decode, loss
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                # sums of the loss and the model's own scalars (the VAE's kl, ...) stay on the device: no step waits
                for key, value in {"train_loss": loss, **{k: v for k, v in out.items() if v.ndim == 0}}.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().float()
                if time.time() - last_print > 15 or (epoch == 0 and i == 19):  # an early rate, then every 15 s
                    runs.show_progress("pretrain", i + 1, steps_per_epoch, loss.item(), lr, (i + 1) * batch_size, t0,
                                       epoch)  # a NaN loss stops the run here, ckpt.pt as it was
                    last_print = time.time()
            if rank == 0:
                results = report_epoch(epoch, args.epochs, sums, steps_per_epoch, time.time() - t0, n, lr,
                                       lambda: evaluate(model, data.test_x, feature_batch_size(device, batch_size),
                                                        args.seed, device, dtype), log_path)
                save_checkpoint(epoch + 1)
        if args.epochs == 0 and rank == 0:  # the untrained model: analyze.py sets it beside pretrained ones
            save_checkpoint(0)
        if world_size > 1:  # evaluation and fine-tuning run in rank 0 alone: the same numbers as one process
            runs.end_process_group()
            if rank != 0:
                return

        # evaluation: reconstruction (the last epoch's, or the checkpoint's where no epoch ran), then the probes
        if results is None:  # no epoch ran here (--epochs 0, or a finished run resumed)
            results = evaluate(model, data.test_x, feature_batch_size(device, batch_size), args.seed, device, dtype)
        protocols = [p for p in args.eval.split(",") if p]
        if {"linear", "knn"} & set(protocols):
            results.update(probe(model, args.model, config, data, protocols, args.probe_size, args.seed, device, dtype))

        # fine-tuning
        if "finetune" in protocols:
            torch.manual_seed(args.seed)  # the same head, order and drop path whatever else --eval ran first
            results["finetune_acc"], tuned, head = finetune(model, data, args.finetune_epochs, batch_size, args.head,
                                                            args.head_lr, args.finetune_lr or args.head_lr,
                                                            recipe["finetune_weight_decay"], device, dtype)
            runs.save_atomic({"model": tuned.state_dict(), "head": head.state_dict(), "head_kind": args.head,
                              "model_name": args.model, "config": dataclasses.asdict(config), "args": vars(args)},
                             os.path.join(out_dir, "finetune.pt"))

        # results
        results = runs.save_results({**results, "model": args.model, "dataset": args.dataset, "epochs": args.epochs,
                                     "train_size": n, "parameters": n_params}, os.path.join(out_dir, "results.json"),
                                    keep_old=args.resume)
        runs.print_results(results, out_dir, device)
        if args.model == "mae" and "finetune" not in protocols:
            print(runs.finetune_hint(argv, out_dir, args.epochs))


if __name__ == "__main__":
    runs.run_main(main, interrupted="interrupted: ckpt.pt keeps the last finished epoch; continue with the same "
                  "command and --resume")
