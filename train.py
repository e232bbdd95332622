"""
Train an autoencoder, then measure what its features are worth.

    python train.py --model dae --dataset fashion-mnist
    python train.py --model mae --dataset mnist --eval linear,knn,finetune

A run, in the order this file reads:
1. arguments: every flag checked before any work starts (a bad value is one line, not a traceback).
2. data (data.py): the whole split loaded once into a uint8 tensor on the device.
3. model and optimiser, from the table MODELS; --resume picks up ckpt.pt.
4. pretraining: the model's own loss (reconstruct, denoise, fill in); one line per epoch, and
   ckpt.pt + log.jsonl written after every epoch so a run can be stopped and resumed.
5. evaluation (evaluate.py): reconstruction quality on the test set, then (--eval) a linear probe and
   k-NN on frozen features and fine-tuning of the encoder with a classification head.

The training step and lr schedule (loop.py) are the same for pretraining, fine-tuning and the probe.
Writes ckpt.pt, log.jsonl, results.json (and finetune.pt) to --out-dir (default out/<model>-<dataset>).
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ae import AE, AEConfig
from dae import DAE, DAEConfig
from data import DATASETS, RunError, load_data
from evaluate import dead_run_warning, downstream, evaluate, extract_features
from loop import (autocast, format_seconds, load_checkpoint, lr_factor, make_optimizer, read_log, save_checkpoint,
                  train_epoch)
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

# -----------------------------------------------------------------------------
# arguments


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


def image_channels(text):
    if text not in ("1", "3"):
        raise argparse.ArgumentTypeError(f"1 (grey) or 3 (RGB), got {text!r} (conv widths are --conv-channels)")
    return int(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--model", required=True, choices=MODELS, help="which autoencoder")
    g.add_argument("--dataset", required=True, choices=DATASETS, help="which images")
    g.add_argument("--data-dir", default="./data", help="where torchvision finds the datasets; for folder, the "
                   "folder of class sub-folders (default: ./data)")
    g.add_argument("--out-dir", default=None, help="where ckpt.pt, log.jsonl, results.json go "
                   "(default: out/<model>-<dataset>)")
    g.add_argument("--epochs", type=count, default=20, help="pretraining epochs (default: 20)")
    g.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per step, over all processes under torchrun; small batches mean more steps, "
                   "which short runs and small datasets need more than the speed of large ones (default: 64)")
    g.add_argument("--lr", type=positive, default=1e-3, help="peak learning rate of AdamW (default: 1e-3)")
    g.add_argument("--weight-decay", type=non_negative, default=None,
                   help="AdamW weight decay (default: 0.05 for mae, 0 for the others)")
    g.add_argument("--warmup-epochs", type=count, default=None,
                   help="linear lr warm-up (default: 2 for mae, 0 for the others)")
    g.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                   help="lr after warm-up (default: cosine)")
    g.add_argument("--seed", type=int, default=0, help="(default: 0)")
    g.add_argument("--device", default=default_device(), help="cpu, cuda, cuda:N or mps (default: cuda, "
                   "else mps, else cpu: here %(default)s)")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads of torch (default: torch's choice, one per core); on small shared CPUs "
                   "one thread often beats two")
    g.add_argument("--train-size", type=count, default=0, help="use the first N training images; 0 = all (default: 0)")
    g.add_argument("--image-size", type=positive_int, default=None, help="folder: images are resized to this "
                   "square (default: 32)")
    g.add_argument("--channels", type=image_channels, default=None, dest="image_channels", metavar="{1,3}",
                   help="folder: 1 = grey, 3 = RGB (default: 3)")
    g.add_argument("--resume", action="store_true", help="continue from <out-dir>/ckpt.pt")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in an --out-dir that already holds a run (its files are replaced)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (GPU speed-up)")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="autocast: auto = bf16 on CUDA, fp32 on CPU; bf16 speeds up CPUs with bf16 instructions "
                   "(lscpu: avx512_bf16, amx) and slows others over 10x (default: auto)")

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
    g.add_argument("--conv-channels", type=int_tuple, default=None, dest="channels", metavar="C1,C2,..",
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
    g.add_argument("--decoder-conv", type=count, default=None, help="kernel of the decoder's conv over the patch "
                   f"grid, odd; 0 = the paper's decoder, attention only (default: {MAEConfig.decoder_conv})")
    g.add_argument("--drop-path", type=bounded(float, 0, 1, high_open=True), default=None,
                   help=f"fine-tuning: stochastic depth of the last block (default: {MAEConfig.drop_path})")
    g.add_argument("--finetune-mask-ratio", type=fraction, default=None,
                   help="fine-tuning: fraction of each training image's patches the encoder drops, as in "
                   f"pretraining; test images keep all (default: {MAEConfig.finetune_mask_ratio})")
    g.add_argument("--norm-pix-loss", action="store_true", default=None,
                   help="predict each patch normalised by its own mean and std (better features: see README); "
                   "its pictures and PSNR borrow each hidden patch's true mean and std, so they flatter it "
                   "beside a pixel-loss run")
    g.add_argument("--pool", choices=["cls", "mean"], default=None,
                   help=f"encode(): CLS token or mean of patch tokens (default: {MAEConfig.pool})")

    args = p.parse_args(argv)
    recipe = MODELS[args.model][2]
    args.weight_decay = recipe["weight_decay"] if args.weight_decay is None else args.weight_decay
    args.warmup_epochs = recipe["warmup_epochs"] if args.warmup_epochs is None else args.warmup_epochs
    args.out_dir = args.out_dir or os.path.join("out", f"{args.model}-{args.dataset}")
    unknown = set(p for p in args.eval.split(",") if p) - {"linear", "knn", "finetune"}
    if unknown:
        p.error(f"--eval: unknown protocol {', '.join(sorted(unknown))} (choose from linear, knn, finetune)")
    check_device(p, args.device)
    if args.dataset != "folder" and (args.image_size or args.image_channels):
        p.error(f"--image-size and --channels are for --dataset folder; {args.dataset} has its own size")
    # build the model once on the CPU, so a setting it cannot take (a patch size that does not divide
    # the image, too many heads for the width, nothing left visible) is refused before any work starts
    try:
        MODELS[args.model][0](build_config(args.model, args, *image_shape(args)))
    except ValueError as e:
        p.error(f"--model {args.model}: {e}")
    return args


def default_device():
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def image_shape(args):
    """(channels, size) of the images: the dataset's own, or what --channels/--image-size ask of a folder."""
    _, channels, size, _, _, _ = DATASETS[args.dataset]
    if args.dataset == "folder":
        return args.image_channels or channels, args.image_size or size
    return channels, size


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


def check_out_dir(args, ckpt_path, results_path, write_probe=True):
    """Refuse to start over a finished or interrupted run by accident, and fail now, not after an epoch,
    if --out-dir cannot be written."""
    finished = [os.path.basename(p) for p in (ckpt_path, results_path) if os.path.exists(p)]
    if finished and not args.resume and not args.overwrite:
        raise RunError(f"{args.out_dir} already holds a run ({', '.join(finished)}): continue it with --resume, "
                       f"start over with --overwrite, or pick another --out-dir")
    if not write_probe:
        return
    created = not os.path.isdir(args.out_dir)
    os.makedirs(args.out_dir, exist_ok=True)
    probe = os.path.join(args.out_dir, ".write-test")
    with open(probe, "w"):
        pass
    os.remove(probe)
    if created:  # made again once there is something to write: a run that fails to start leaves no trace
        os.rmdir(args.out_dir)


# -----------------------------------------------------------------------------
# models from the table: a new one from flags, a trained one from its checkpoint (loop.py saves them)


def build_config(model_name, args, in_channels, image_size, saved=None):
    """The model's config: the dataclass defaults, or the saved config of the checkpoint a run resumes,
    overridden by every flag of the same name that was given."""
    config_cls = MODELS[model_name][1]
    names = [f.name for f in dataclasses.fields(config_cls)]
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    saved = {k: v for k, v in (saved or {}).items() if k in names}  # a field this version lacks is left out
    return config_cls(**{**saved, **given, "in_channels": in_channels, "image_size": image_size})


def resume_from(ckpt, ckpt_path, model, config, optimizer):
    """Load a checkpoint's weights and optimizer state into a model built with `config`; returns the epoch
    the checkpoint finished. Settings that keep the weights' shapes may change; others cannot."""
    new = dataclasses.asdict(config)
    changed = ", ".join(f"{k}: {v} -> {new.get(k)}" for k, v in ckpt["config"].items() if new.get(k) != v)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    if shapes != {k: v.shape for k, v in ckpt["model"].items()}:
        raise RunError(f"{ckpt_path} was trained with other model settings ({changed}): "
                       f"resume without the flags that change them, or use another --out-dir")
    if changed:  # e.g. another --drop-path or --mask-ratio: the same weights, used differently from now on
        print(f"resuming with changed settings: {changed}")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    print(f"resumed from {ckpt_path} after epoch {ckpt['epoch']}")
    return ckpt["epoch"]


def load_run(run_dir, device="cpu"):
    """(model in eval mode, args dict, checkpoint) of a finished or interrupted run, for analysis."""
    ckpt = load_checkpoint(os.path.join(run_dir, "ckpt.pt"))
    model_cls, config_cls, _ = MODELS[ckpt["model_name"]]
    model = model_cls(config_cls(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt["args"], ckpt


# -----------------------------------------------------------------------------
# pretraining


def pretrain(model, data, args, optimizer, start_epoch, log_path, rank=0, world_size=1):
    """Epochs start_epoch .. args.epochs of the model's own loss; after each, rank 0 evaluates on the test
    set, prints a line, appends it to log.jsonl and saves ckpt.pt."""
    # under torchrun, DDP averages the gradients of all processes in backward(): every process then
    # takes the same AdamW step, so the weights stay identical without ever being sent
    forward = DDP(model) if world_size > 1 else model
    forward = torch.compile(forward) if args.compile else forward  # same weights, fused kernels
    n = len(data.train_x)
    steps_per_epoch = math.ceil(n / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = args.warmup_epochs * steps_per_epoch

    def step_loss(idx):
        idx = idx[rank::world_size]  # this process's share of the batch (all of it in one process)
        with autocast(args.device, args.precision):
            return forward(data.train_batch(idx))

    for epoch in range(start_epoch, args.epochs):
        # everything random in an epoch (order, noise, masks) follows from (seed, epoch): a run
        # resumed after epoch k repeats exactly what the uninterrupted run did
        torch.manual_seed(args.seed * 1000 + epoch)
        model.epoch = epoch  # what changes over training reads it, e.g. the VAE's KL warm-up
        model.train()
        t0 = time.time()
        try:
            train_stats = train_epoch(step_loss, optimizer, torch.randperm(n, device=data.train_x.device),
                                      args.batch_size, epoch * steps_per_epoch,
                                      lambda step: lr_factor(step, total_steps, warmup_steps, args.schedule))
        except FloatingPointError as e:
            kept = f"ckpt.pt keeps epoch {epoch}" if epoch > 0 else "nothing was saved"
            raise FloatingPointError(f"{e} of epoch {epoch + 1}; {kept}. Try a lower --lr (now {args.lr}).") from None
        seconds = time.time() - t0
        if rank != 0:
            continue
        test_stats = evaluate(model, data, args)
        entry = {"epoch": epoch + 1, "train_loss": train_stats.pop("train_loss"), "test_loss": test_stats["test_loss"],
                 "psnr": test_stats["psnr"], "ssim": test_stats["ssim"], "seconds": seconds}
        if "psnr_hidden" in test_stats:  # masked models: the score of the fill-in alone
            entry["psnr_hidden"] = test_stats["psnr_hidden"]
        for key, value in train_stats.items():  # the model's own scalars: train and test
            entry[key], entry["test_" + key] = value, test_stats[key]
        extra = "".join(f" | {key} {value:.2f}" for key, value in train_stats.items())
        hidden = f" (hidden {entry['psnr_hidden']:.2f})" if "psnr_hidden" in entry else ""
        print(f"epoch {epoch + 1}/{args.epochs} | train {entry['train_loss']:.4f} | test {entry['test_loss']:.4f}"
              f"{extra} | psnr {entry['psnr']:.2f} dB{hidden} | ssim {entry['ssim']:.3f} | {n / seconds:.0f} img/s "
              f"| {seconds:.1f}s | eta {format_seconds(seconds * (args.epochs - epoch - 1))}", flush=True)
        warning = dead_run_warning(test_stats)
        if warning:
            print(warning, flush=True)
        with open(log_path, "a") as f:  # log first: a crash before the checkpoint leaves a line to trim
            f.write(json.dumps(entry) + "\n")
        save_checkpoint(model, optimizer, epoch + 1, args)


# -----------------------------------------------------------------------------
# the run


def main(argv=None):
    args = parse_args(argv)
    # data parallelism: torchrun starts one process per device and tells each its RANK and the WORLD_SIZE
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        if args.device.startswith("cuda"):
            args.device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(args.device)
        if rank != 0:
            sys.stdout = open(os.devnull, "w")  # rank 0 alone prints and writes files
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: float32 range, tensor-core speed
        torch.backends.cudnn.allow_tf32 = True
    ckpt_path, log_path = os.path.join(args.out_dir, "ckpt.pt"), os.path.join(args.out_dir, "log.jsonl")
    results_path = os.path.join(args.out_dir, "results.json")
    check_out_dir(args, ckpt_path, results_path, write_probe=rank == 0)

    t0 = time.time()
    channels, size = image_shape(args)
    data = load_data(args.dataset, args.data_dir, args.device, args.train_size, args.seed, size, channels)
    print(f"data: {args.dataset}, {len(data.train_x)} train / {len(data.test_x)} test images "
          f"{tuple(data.train_x.shape[1:])} on {args.device} in {time.time() - t0:.1f}s")

    torch.manual_seed(args.seed)
    model_cls, _, recipe = MODELS[args.model]
    ckpt = load_checkpoint(ckpt_path, args.model) if args.resume else None
    # a resumed run keeps the settings it was trained with (--norm-pix-loss, --mask-ratio, ...) unless a
    # flag given now changes them: `--resume --eval finetune` alone fine-tunes the model that was trained
    config = build_config(args.model, args, data.train_x.shape[1], data.train_x.shape[2],
                          saved=ckpt["config"] if ckpt else None)
    model = model_cls(config).to(args.device)
    if hasattr(model, "init_output_bias"):  # AE family: the sigmoid decoder starts at the mean image
        model.init_output_bias(data.train_x.mean(dim=0, dtype=torch.float32) / 255)
    optimizer = make_optimizer([{"params": model.parameters(), "lr": args.lr}], recipe["betas"], args.weight_decay)
    start_epoch = resume_from(ckpt, ckpt_path, model, config, optimizer) if ckpt else 0
    if rank == 0:
        os.makedirs(args.out_dir, exist_ok=True)
        entries = read_log(log_path, start_epoch)
        with open(log_path, "w") as f:  # keep the log in step with the checkpoint
            f.writelines(json.dumps(e) + "\n" for e in entries)
    n_params = sum(p.numel() for p in model.parameters())
    feature_dim = extract_features(model, data.test_x[:1], 1, args.device).shape[1]
    print(f"model: {config}\n{n_params / 1e6:.2f}M parameters, {feature_dim}-d features")
    if start_epoch < args.epochs:
        pretrain(model, data, args, optimizer, start_epoch, log_path, rank, world_size)
    elif args.epochs == 0 and rank == 0:  # the untrained model: analyze.py sets it beside pretrained ones
        save_checkpoint(model, optimizer, 0, args)
    if world_size > 1:  # evaluation and fine-tuning run in rank 0 alone: the same numbers as one process
        dist.destroy_process_group()
        if rank != 0:
            return

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
    print(f"wrote {args.out_dir}/ckpt.pt, log.jsonl, results.json" + (", finetune.pt" if "finetune_acc" in results else ""))


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
