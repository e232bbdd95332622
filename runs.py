"""
A run's directory, kept out of train.py's way: nothing here is about learning.

    with owned_out_dir("out/mae-mnist"):          # the lock: one live run per directory
        save_atomic(state, "out/mae-mnist/ckpt.pt")
    model, flags, ckpt = load_run("out/mae-mnist")  # what analyze.py reads

The table of models; the command line both scripts share (one-line errors, ranged number types); the lock
that makes one run the only writer of its --out-dir; saves that never leave a broken file; checkpoints,
resuming, the log, loading finished runs; torchrun's processes; what a run says (its first and last lines,
progress, the probe table, the warning that a run learned nothing, the fine-tuning hint).
"""
import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import shlex
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ae import AE, AEConfig
from dae import DAE, DAEConfig
from data import Data, RunError, image_shape, load_data
from mae import MAE, MAEConfig
from mcae import MCAE, MCAEConfig
from vae import VAE, VAEConfig

# model name -> (class, config): every other file knows the models through the model contract alone
MODELS = {"ae": (AE, AEConfig), "dae": (DAE, DAEConfig), "vae": (VAE, VAEConfig),
          "mcae": (MCAE, MCAEConfig), "mae": (MAE, MAEConfig)}

# -----------------------------------------------------------------------------
# the command line, and the model it asks for


class Parser(argparse.ArgumentParser):
    """argparse with a bad flag reported in one line, without the page of usage (--help shows it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists every flag)\n")


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
        if (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {allowed}")
        return value
    return parse


def int_tuple(text):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 512,256, got {text!r}")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return values


positive_int = bounded(int, 1)
count = bounded(int, 0)                                  # epochs, sizes: 0 allowed
positive = bounded(float, 0, low_open=True)              # learning rates
non_negative = bounded(float, 0)                         # noise, weight decay, loss weights
fraction = bounded(float, 0, 1, high_open=True)          # mask ratios


def build_config(model_name, flags, saved=None):
    """The model's config: the dataclass defaults, or the saved config of the checkpoint a run resumes,
    overridden by every flag of the same name that was given (flags: train.py's, {name: value or None}),
    for images of the shape of flags["dataset"]."""
    config_cls = MODELS[model_name][1]
    names = [f.name for f in dataclasses.fields(config_cls)]
    given = {name: flags[name] for name in names if flags.get(name) is not None}
    saved = {k: v for k, v in (saved or {}).items() if k in names}  # a field this version lacks is left out
    in_channels, image_size = image_shape(flags["dataset"], flags.get("image_channels"), flags.get("image_size"))
    return config_cls(**{**saved, **given, "in_channels": in_channels, "image_size": image_size})


def build_model(model_name, flags, saved=None):
    """The model of build_config(...) (model.config holds it); a setting it cannot take (a patch size that
    does not divide the image, nothing left visible) is refused in one line, as argparse refuses a bad flag."""
    try:
        return MODELS[model_name][0](build_config(model_name, flags, saved))
    except ValueError as e:
        Parser(prog=os.path.basename(sys.argv[0])).error(f"--model {model_name}: {e}")


def field_of(flag, keywords):
    return keywords.get("dest", flag[2:].replace("-", "_"))  # --latent-dim -> latent_dim


def add_model_flags(group, model_flags):
    """train.py's model settings [(flag, models, argparse keywords)] into an argparse group, each help
    ending in the models it is for and their configs' defaults: '[ae, dae] ... (default: ae/dae 100)'."""
    for flag, models, keywords in model_flags:
        by_default = {}  # each config's default -> the models that have it: '32', or 'ae/dae/mcae 100; vae 32'
        for m in models:
            by_default.setdefault(getattr(MODELS[m][1], field_of(flag, keywords)), []).append(m)
        defaults = "; ".join(f"{'/'.join(ms)} {v}" if len(by_default) > 1 else str(v) for v, ms in by_default.items())
        defaults = defaults.replace(", ", ",").replace("(", "").replace(")", "")  # (512, 256) -> 512,256
        group.add_argument(flag, **{**keywords, "help": f"[{', '.join(models)}] {keywords['help']} (default: {defaults})"})


def check_flags(parser, flags, model_flags):
    """Refuse, in one line, a --device torch does not know or this machine lacks, and a model setting given
    for a model that does not have it."""
    try:
        device = torch.device(flags["device"])
    except RuntimeError:
        parser.error(f"--device: unknown device {flags['device']!r} (use cpu, cuda or cuda:N)")
    gpus = torch.cuda.device_count()
    if device.type == "cuda" and (device.index or 0) >= gpus:
        parser.error(f"--device {device}: torch sees {f'only {gpus} CUDA GPU(s)' if gpus else 'no CUDA GPU'} here "
                     "(use --device cpu)")
    for flag, models, keywords in model_flags:
        value = flags[field_of(flag, keywords)]
        if value is not None and flags["model"] not in models:
            given = "--no-" + flag[2:] if value is False else flag  # --no-norm-pix-loss
            parser.error(f"{given} is for --model {' or '.join(models)}, not {flags['model']}")


# -----------------------------------------------------------------------------
# the run directory: owned by one run at a time, written so that a crash never leaves a broken file


def lock_out_dir(out_dir):
    """An exclusive lock on OUT_DIR/.lock, held while this process lives: -> the open lock file. The system
    releases it when the process ends, however it ends (kill -9 too): no stale lock. A second run on the
    directory finds it held and stops, naming the live run, before it reads data or touches a file."""
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


@contextlib.contextmanager
def owned_out_dir(out_dir, resume, overwrite, lock=True):
    """The run's hold on its --out-dir: the lock of lock_out_dir while the run lives (lock=False: another
    process of the run holds it), no run started over a finished one by accident (check_out_dir), and no
    directory left behind by a run that failed before writing anything."""
    created = not os.path.isdir(out_dir)
    handle = lock_out_dir(out_dir) if lock else None
    try:
        check_out_dir(out_dir, resume, overwrite)
        yield
    except BaseException:
        if created and os.path.isdir(out_dir) and os.listdir(out_dir) == [".lock"]:
            os.remove(os.path.join(out_dir, ".lock"))
            os.rmdir(out_dir)
        raise
    finally:
        if handle:
            handle.close()


def check_out_dir(out_dir, resume, overwrite):
    """Refuse to start over a finished or interrupted run by accident."""
    finished = [name for name in ("ckpt.pt", "results.json") if os.path.exists(os.path.join(out_dir, name))]
    if finished and not resume and not overwrite:
        raise RunError(f"{out_dir} already holds a run ({', '.join(finished)}): continue it with --resume, "
                       f"start over with --overwrite, or pick another --out-dir")


def to_cpu(obj):
    """Every tensor inside nested dicts and lists copied to the CPU, the rest as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {key: to_cpu(value) for key, value in obj.items()}
    return [to_cpu(value) for value in obj] if isinstance(obj, (list, tuple)) else obj


def save_atomic(obj, path):
    """torch.save of obj's tensors as CPU tensors (torch.load then reads the file on a machine without a
    GPU) to a temporary file, then rename: an interrupted save never leaves a broken file, and the previous
    one stays until the new one is complete. A failed write (a full disk) is one line."""
    buffer = io.BytesIO()
    torch.save(to_cpu(obj), buffer)  # in memory first: the size it needs is known when the disk refuses it
    write_atomic(buffer.getvalue(), path)


def write_atomic(data, path):
    """Write bytes (or text) to path through a temporary file and a rename."""
    data = data.encode() if isinstance(data, str) else data
    try:
        with open(path + ".tmp", "wb") as f:
            f.write(data)
    except OSError as e:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        kept = "the previous one is kept" if os.path.exists(path) else "nothing was written"
        raise RunError(f"could not write {path} ({len(data) / 1e6:.1f} MB): {e.strerror or e}; {kept}") from None
    os.replace(path + ".tmp", path)


def save_results(results, path, keep_old):
    """Write results.json; keep_old: numbers of an earlier run of this checkpoint that this one did not
    measure stay (--resume --eval finetune keeps linear and knn). -> the results written."""
    if keep_old and os.path.exists(path):
        with open(path) as f:
            results = {**json.load(f), **results}
    write_atomic(json.dumps(results, indent=2), path)
    return results


CHECKPOINT_KEYS = {"model", "optimizer", "epoch", "model_name", "config", "args"}


def load_checkpoint(path, model_name=None):
    """The dict of a ckpt.pt, checked: one line (RunError) for a missing, damaged or foreign file."""
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


def start_from(ckpt, ckpt_path, log_path, model, optimizer, scaler, rank=0):
    """Where a run starts: a new run (ckpt None) at epoch 0, its log.jsonl empty; a resumed one from the
    checkpoint's weights, optimizer and loss-scaler state, its log trimmed to the epochs it holds (rank 0
    writes). -> the epoch to start from. Settings that keep the weights' shapes may change; others cannot."""
    if rank == 0:
        trim_log(log_path, ckpt["epoch"] if ckpt else 0)  # the log in step with the checkpoint
    if ckpt is None:
        return 0
    new = dataclasses.asdict(model.config)
    changed = ", ".join(f"{k}: {v} -> {new.get(k)}" for k, v in ckpt["config"].items() if new.get(k) != v)
    if {k: v.shape for k, v in model.state_dict().items()} != {k: v.shape for k, v in ckpt["model"].items()}:
        raise RunError(f"{ckpt_path} was trained with other model settings ({changed}): "
                       f"resume without the flags that change them, or use another --out-dir")
    if changed:  # e.g. another --mask-ratio: the same weights, used differently from now on
        print(f"resuming with changed settings: {changed}")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])  # moves the moments to the parameters' device
    if scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    print(f"resumed from {ckpt_path} after epoch {ckpt['epoch']}")
    return ckpt["epoch"]


def read_log(log_path, up_to_epoch):
    """Log entries of the epochs a checkpoint holds (a crash between log and checkpoint leaves extra)."""
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    return [e for e in entries if e["epoch"] <= up_to_epoch]


def trim_log(log_path, up_to_epoch):
    """Rewrite the log with the entries of the epochs the checkpoint holds (none for a new run)."""
    write_atomic("".join(json.dumps(e) + "\n" for e in read_log(log_path, up_to_epoch)), log_path)


def plain(value):
    """Tensors and arrays inside value -> lists, so json can write it (analyze.py's analysis.json)."""
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    return value.tolist() if isinstance(value, (torch.Tensor, np.ndarray)) else value


def load_run(run_dir, device="cpu"):
    """(model in eval mode, the run's flags as a dict, checkpoint) of a finished or interrupted run."""
    ckpt = load_checkpoint(os.path.join(run_dir, "ckpt.pt"))
    model_cls, config_cls = MODELS[ckpt["model_name"]]
    model = model_cls(config_cls(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt["args"], ckpt


# -----------------------------------------------------------------------------
# finished runs as analyze.py reads them: model, flags, log, results and dataset


@dataclasses.dataclass
class Run:
    name: str               # the run directory's name, used in legends and tables
    path: str               # the run directory
    model: nn.Module        # in eval mode, on the analysis device
    kind: str               # 'ae', 'dae', 'vae', 'mcae' or 'mae'
    args: dict              # train.py's flags
    config: dict            # the model's config, as saved in the checkpoint
    log: list               # one dict per epoch (log.jsonl)
    results: dict           # results.json (empty if the run stopped before writing it)
    data: Data              # the run's dataset


def load_runs(run_dirs, device, data_dir=None):
    """Load every run with its log, results and dataset. Each run's data comes from the --data-dir it was
    trained with, so runs of different datasets mix; data_dir overrides it. Each dataset is read once."""
    for run_dir in run_dirs:  # check them all first: a typo should not cost the time of loading the rest
        if not os.path.isfile(os.path.join(run_dir, "ckpt.pt")):
            raise RunError(f"{run_dir} has no ckpt.pt: give run directories written by train.py")
    names = [os.path.basename(os.path.abspath(d)) for d in run_dirs]
    datasets, runs = {}, []
    for run_dir, name in zip(run_dirs, names):
        if names.count(name) > 1:  # out/a/dae and out/b/dae: keep them apart in tables and legends
            name = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(run_dir))), name)
        model, args, ckpt = load_run(run_dir, device)
        dataset, directory = args["dataset"], data_dir or args["data_dir"]
        channels, size = ckpt["config"]["in_channels"], ckpt["config"]["image_size"]
        # the jittered CIFAR-10 test set and a folder's test split are drawn from the run's seed
        key = (dataset, directory, args["seed"] if dataset in ("cifar10-jitter", "folder") else 0, channels, size)
        if key not in datasets:
            datasets[key] = load_data(dataset, directory, device, seed=args["seed"], image_size=size, channels=channels)
        results_path = os.path.join(run_dir, "results.json")
        results = json.load(open(results_path)) if os.path.exists(results_path) else {}
        log = read_log(os.path.join(run_dir, "log.jsonl"), ckpt["epoch"])
        runs.append(Run(name, run_dir, model, ckpt["model_name"], args, ckpt["config"], log, results, datasets[key]))
    return runs


# -----------------------------------------------------------------------------
# processes: torchrun's, and the one a user starts


def start_process(device, rank, world_size):
    """Join torchrun's process group when there is one (gloo on CPUs, nccl on GPUs: each process its own
    GPU, rank 0 alone prints); TF32 matmuls on CUDA (float32's range, tensor-core speed). -> the device."""
    if world_size > 1:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(device)
        if rank != 0:
            sys.stdout = open(os.devnull, "w")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def end_process_group():
    """Leave torchrun's process group once every process has arrived: rank 0 has written its last checkpoint
    and the others their last step."""
    dist.barrier()
    dist.destroy_process_group()


def run_main(main, interrupted="interrupted"):
    """Run a script's main(): what the user can fix (RunError, a diverged loss, an unwritable or unreadable
    file) is one line on stderr and exit status 1; Ctrl-C prints `interrupted`. Stack traces are for bugs."""
    try:
        main()
    except (RunError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\n" + interrupted, file=sys.stderr)
        sys.exit(130)


# -----------------------------------------------------------------------------
# what a run says


def finetune_hint(argv, out_dir, epochs):
    """The MAE's last lines: where it shines, fine-tuning, beside the same ViT trained from scratch; two
    commands to paste, built from the run's own flags (argv; None: sys.argv), each flag once."""
    words, skip = [], False
    for word in sys.argv[1:] if argv is None else argv:  # the run's own flags, less those the two commands set
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


def format_seconds(s):
    return f"{s / 60:.1f}m" if s >= 90 else f"{s:.0f}s"  # 45s, 2.5m


def describe_run(epochs, n_images, batch_size, device, world_size, dtype, compiled, lr, recipe, weight_decay):
    """The run's first lines: how much it sees, where and in which precision, and the recipe."""
    where = (f"the CPU (threads: {torch.get_num_threads()})" if device == "cpu" else device) + (
        f" in each of {world_size} processes" if world_size > 1 else "")
    warmup = f"after {recipe['warmup'] * epochs:g} epochs of warm-up" if recipe["warmup"] else "from the start"
    return (f"run: {epochs} epochs x {n_images} images = {epochs * n_images} images seen, batch {batch_size}, on "
            f"{where}, in {dtype}{', compiled' if compiled else ''}\n"
            f"recipe: AdamW, lr {lr:g} {warmup}, then a cosine to 0; betas {recipe['betas']}, weight decay "
            f"{weight_decay:g}")


def check_finite(loss, epoch):
    """The loss read back (a float), or a one-line stop where it became NaN or inf: the run ends before
    the next checkpoint, so ckpt.pt keeps the last good epoch."""
    if not math.isfinite(loss):
        kept = f"ckpt.pt keeps epoch {epoch}" if epoch > 0 else "nothing was saved"
        raise FloatingPointError(f"loss became {loss} in epoch {epoch + 1}; {kept}. Try a lower --lr.")
    return loss


def print_results(results, out_dir, device):
    """The run's last lines: results.json's numbers (the probes' are in their table), the warning of a run
    that learned nothing, the GPU memory it needed at most, the files written."""
    print("results: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items() if isinstance(v, float) and
                                  not k.endswith("_acc")))
    if dead_run_warning(results):
        print(dead_run_warning(results))
    if torch.device(device).type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB")
    finetuned = ", finetune.pt" if os.path.exists(os.path.join(out_dir, "finetune.pt")) else ""
    print(f"wrote {out_dir}/ckpt.pt, log.jsonl, results.json{finetuned}")


def show_progress(label, step, steps, loss, lr, images, t0, epoch=0):
    """A line during a long epoch: step, loss (a NaN stops the run: check_finite), lr, how long it has left."""
    check_finite(loss, epoch)
    rate = images / (time.time() - t0)
    print(f"  {label} step {step}/{steps} | loss {loss:.4f} | lr {lr:.2e} | {rate:.0f} img/s "
          f"| epoch eta {format_seconds((steps - step) * images / step / rate)}", flush=True)


# the rows of the probe table, by the prefix of their keys in results.json
ROW_NAMES = {"pixels_": "raw pixels", "init_": "untrained encoder", "": "trained encoder",
             "tokens_": "trained patch tokens"}


def probe_table(results, sizes, model_name, config):
    """The probes as a table a student reads at a glance, and a verdict line per probe on the trained row."""
    vector = feature_name(model_name, config)
    lines = [f"{'test accuracy of a probe on':<42} {'linear':>7} {'k-NN':>7}"]
    for prefix, name in ROW_NAMES.items():
        if prefix in sizes:
            what = f"{name}, {sizes[prefix]}-d" + (f" {vector}" if prefix in ("", "init_") else "")
            lines.append(f"  {what:<40}" + "".join(
                f" {results[prefix + key]:>7.4f}" if prefix + key in results else f" {'':>7}"
                for key in ("linear_acc", "knn_acc")))
    for key, probe in (("knn_acc", "k-NN"), ("linear_acc", "linear probe")):
        if key in results:
            bought, over_pixels = results[key] - results["init_" + key], results[key] - results["pixels_" + key]
            lines.append(f"{probe}: the trained {vector} is {abs(100 * over_pixels):.1f} points "
                         f"{'above' if over_pixels >= 0 else 'below'} raw pixels; pretraining bought "
                         f"{100 * bought:+.1f} points over the untrained encoder")
    return "\n".join(lines)


def feature_name(model_name, config):
    """What encode() returns, in words."""
    if model_name == "mae":
        return "CLS token" if config["pool"] == "cls" else "mean of the patch tokens"
    return "mean of q(z|x)" if model_name == "vae" else "latent code"


def dead_run_warning(stats):
    """One line when a model outputs about the same image for every input (a dead run: a saturated
    sigmoid, dead ReLUs, a diverged lr), whose figures would otherwise look like results; else None."""
    if stats.get("recon_spread", 1.0) < 0.01:
        return (f"warning: the reconstructions hardly differ between images (spread {stats['recon_spread']:.4f}, "
                f"PSNR {stats['psnr']:.2f} dB): the model outputs about the same image for every input and "
                f"has not learned; try a lower --lr or more epochs")
    return None
