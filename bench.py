"""
Speed of nanoAE, measured on this machine: prints a table and writes bench.json.

    python bench.py            # everything: about 8 minutes on one CPU thread
    python bench.py --quick    # smaller sizes, under a minute

What it measures:
- matmul GFLOP/s of the device: the ceiling the models are compared against
- pretraining images/s of every model at MNIST (28x28x1) and CIFAR-10 (32x32x3) shapes, and the
  share of a step spent outside forward/backward/optimizer (slicing the resident uint8 data,
  converting to float, per-image colour jitter for cifar10-jitter)
- the MAE at the DAE-vs-MAE study's MNIST shape (patch 2, embed 64, depth 6, 4 heads, decoder 64 x 2, batch 256):
  images/s, achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode), and the speed-up of the
  fused attention (F.scaled_dot_product_attention) over the written-out softmax(q k^T) v, and where
  a step's time goes (torch.profiler, operators grouped: matmul, attention, GELU, copies, ...)
- t-SNE (metrics.tsne) against scikit-learn's TSNE: seconds and trustworthiness at the same N
- SSIM/PSNR over the test set (metrics.ssim) against scikit-image called image by image

scikit-learn and scikit-image are only needed for the comparisons (requirements-dev.txt); without
them those rows are skipped.
"""
import argparse
import json
import platform
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import mae as mae_module
import metrics
import train
from data import Data, RunError, load_data, to_float

# the DAE-vs-MAE study's shapes: MNIST MAE (patch 2, embed 64, latent 50x64) and CIFAR-10 MAE (embed 192)
MAE_STUDY_MNIST = dict(patch_size=2, embed_dim=64, depth=6, num_heads=4, decoder_embed_dim=64, decoder_depth=2)
MAE_STUDY_CIFAR = dict(patch_size=2, embed_dim=192, depth=6, num_heads=4, decoder_embed_dim=64, decoder_depth=2)
DATASET_SHAPES = {"mnist": (1, 28, False), "cifar10": (3, 32, False), "cifar10-jitter": (3, 32, True)}


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat):
    """Seconds per call of fn, after one warm-up call."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


def matmul_gflops(device, n):
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = timed(lambda: a @ b, device, repeat=10)
    return 2 * n ** 3 / seconds / 1e9


def fake_data(dataset, n, device):
    """Random uint8 images resident on the device, shaped like the dataset: speed does not care."""
    channels, size, jitter = DATASET_SHAPES[dataset]
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (n,), device=device)
    return Data(images, labels, images[:1000], labels[:1000], jitter, [str(i) for i in range(10)])


def bench_pretraining(model_name, dataset, batch_size, steps, device, compile_model=False, **config):
    """Images/s of pretraining steps, and the share of step time spent preparing the batch."""
    data = fake_data(dataset, 20 * batch_size, device)
    model_cls, config_cls, _ = train.MODELS[model_name]
    model = model_cls(config_cls(in_channels=data.train_x.shape[1], image_size=data.train_x.shape[2], **config))
    model = model.to(device).train()
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    perm = torch.randperm(len(data.train_x), device=device)
    idx = [perm[i * batch_size:(i + 1) * batch_size] for i in range(20)]
    batch = data.train_batch(idx[0])

    def prepare():
        return data.train_batch(idx[np.random.randint(20)])

    def compute():
        with train.autocast(device):
            loss, _ = forward(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t_data = timed(prepare, device, repeat=steps)
    t_compute = timed(compute, device, repeat=steps)
    return {"model": model_name, "dataset": dataset, "batch_size": batch_size,
            "images_per_s": batch_size / (t_data + t_compute), "ms_per_step": 1000 * (t_data + t_compute),
            "data_share": t_data / (t_data + t_compute), "model_obj": model, "batch": batch}


def step_flops(model, batch):
    """FLOPs of one forward + backward, counted per operator by torch (matmuls, convs, attention)."""
    with FlopCounterMode(display=False) as counter:
        loss, _ = model(batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def bench_attention_paths(batch_size, steps, device):
    """MAE pretraining images/s with the fused attention and with the written-out one."""
    fused = bench_pretraining("mae", "mnist", batch_size, steps, device, **MAE_STUDY_MNIST)
    fused_forward = mae_module.Attention.forward
    try:  # every attention call takes the written-out path (and throws its weights away)
        mae_module.Attention.forward = lambda self, x, return_attention=False: \
            fused_forward(self, x, return_attention=True) if return_attention else \
            fused_forward(self, x, return_attention=True)[0]
        written_out = bench_pretraining("mae", "mnist", batch_size, steps, device, **MAE_STUDY_MNIST)
    finally:
        mae_module.Attention.forward = fused_forward
    return fused, written_out


# operator name fragments -> what the time is spent on; the first match wins (backward ops included)
OP_GROUPS = [("attention (SDPA)", ("scaled_dot_product", "attention")), ("matmul", ("mm", "linear", "matmul")),
             ("GELU", ("gelu",)), ("layer norm", ("layer_norm",)), ("softmax", ("softmax",)),
             ("masking (sort, gather, scatter)", ("sort", "gather", "scatter", "index", "rand")),
             ("copies (copy_, cat, contiguous)", ("copy", "cat", "clone", "contiguous")),
             ("optimizer (AdamW)", ("foreach", "adam", "lerp", "addcdiv", "sqrt")),
             ("elementwise and reductions", ("add", "mul", "sub", "div", "pow", "sum", "mean", "neg", "fill"))]


def op_group(name):
    """The OP_GROUPS entry an operator's time is counted in, e.g. aten::addmm -> matmul."""
    name = name.lower()
    return next((group for group, parts in OP_GROUPS if any(p in name for p in parts)), "other")


def profile_step(model, batch, device, steps=2):
    """Share of one training step's time per group of operators (self time, forward + backward + AdamW)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cuda = torch.device(device).type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            with train.autocast(device):
                loss, _ = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
    totals = {}
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue  # autograd and optimizer wrappers: their time is in the aten ops they call
        seconds = event.self_device_time_total if cuda else event.self_cpu_time_total
        totals[op_group(event.key)] = totals.get(op_group(event.key), 0.0) + seconds
    total = sum(totals.values())
    return dict(sorted(((g, t / total) for g, t in totals.items()), key=lambda kv: -kv[1]))


def tsne_features(n):
    """(n, 50) features with class labels: PCA of real Fashion-MNIST test images when installed."""
    try:
        data = load_data("fashion-mnist", "./data", "cpu")
        x = to_float(data.test_x[:n]).flatten(1)
        labels = data.test_y[:n]
    except RunError:  # no data: Gaussian blobs in 50-D, 10 classes
        gen = torch.Generator().manual_seed(0)
        labels = torch.randint(0, 10, (n,), generator=gen)
        x = torch.randn(10, 50, generator=gen)[labels] * 3 + torch.randn(n, 50, generator=gen)
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return (x @ v[:50].T).numpy(), labels.numpy()


def bench_tsne(n, device):
    x, _ = tsne_features(n)
    t0 = time.perf_counter()
    y = metrics.tsne_fast(torch.from_numpy(x), seed=0, device=device)
    row = {"n": n, "ours_s": time.perf_counter() - t0}
    try:
        from sklearn.manifold import TSNE, trustworthiness
    except ImportError:
        return row
    t0 = time.perf_counter()
    y_ref = TSNE(perplexity=30, init="pca", random_state=0).fit_transform(x)
    row["sklearn_s"] = time.perf_counter() - t0
    row["ours_trust"] = trustworthiness(x, y, n_neighbors=10)
    row["sklearn_trust"] = trustworthiness(x, y_ref, n_neighbors=10)
    return row


def bench_ssim(n, device):
    """Our batched SSIM + PSNR over n image pairs against scikit-image per image (timed on a sample)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=gen)
    y = (x + 0.1 * torch.randn(n, 1, 28, 28, generator=gen)).clamp(0, 1)
    xd, yd = x.to(device), y.to(device)
    ours = timed(lambda: (metrics.ssim_fast(yd, xd), metrics.psnr(yd, xd)), device, repeat=3)
    row = {"n": n, "ours_s": ours}
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError:
        return row
    sample = min(n, 500)
    a, b = x[:sample, 0].numpy(), y[:sample, 0].numpy()
    t0 = time.perf_counter()
    for i in range(sample):
        structural_similarity(a[i], b[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=1)
        peak_signal_noise_ratio(a[i], b[i], data_range=1)
    row["skimage_s"] = (time.perf_counter() - t0) * n / sample
    row["speedup"] = row["skimage_s"] / ours
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer steps: under a minute")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="(default: cuda if available, else cpu)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (GPU)")
    p.add_argument("--out", default="bench.json", help="(default: bench.json)")
    args = p.parse_args()
    device, steps = args.device, (3 if args.quick else 10)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.startswith("cuda") else (platform.processor() or platform.machine())
    report = {"device": f"{device} ({name}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d")}
    print(f"nanoAE bench on {report['device']}, torch {torch.__version__}")

    report["matmul_gflops"] = matmul_gflops(device, 1024 if device == "cpu" else 8192)
    print(f"\nmatmul float32: {report['matmul_gflops']:.0f} GFLOP/s")

    print(f"\n{'model':<6} {'dataset':<15} {'batch':>5} {'img/s':>8} {'ms/step':>8} {'data share':>10}")
    report["pretraining"] = []
    for dataset in ("mnist", "cifar10", "cifar10-jitter"):
        for model_name in train.MODELS:
            config = {}
            if model_name == "mae":
                if args.quick and dataset != "mnist":
                    continue  # the 65-token, 192-wide CIFAR-10 MAE takes seconds a step on a CPU
                config = MAE_STUDY_MNIST if dataset == "mnist" else MAE_STUDY_CIFAR
            row = bench_pretraining(model_name, dataset, 256, steps, device, args.compile, **config)
            row.pop("model_obj"), row.pop("batch")
            report["pretraining"].append(row)
            print(f"{model_name:<6} {dataset:<15} {256:>5} {row['images_per_s']:>8.0f} {row['ms_per_step']:>8.1f} "
                  f"{100 * row['data_share']:>9.1f}%")

    fused, written = bench_attention_paths(256, steps, device)
    flops = step_flops(fused["model_obj"], fused["batch"])
    report["mae_study_mnist"] = {
        "images_per_s": fused["images_per_s"], "written_out_images_per_s": written["images_per_s"],
        "sdpa_speedup": fused["images_per_s"] / written["images_per_s"],
        "gflop_per_step": flops / 1e9, "achieved_gflops": flops / 1e9 / (fused["ms_per_step"] / 1000),
    }
    m = report["mae_study_mnist"]
    print(f"\nMAE at the DAE-vs-MAE study's MNIST shape, batch 256: {m['images_per_s']:.0f} img/s fused attention, "
          f"{m['written_out_images_per_s']:.0f} written out (x{m['sdpa_speedup']:.2f}); "
          f"{m['gflop_per_step']:.1f} GFLOP/step -> {m['achieved_gflops']:.0f} GFLOP/s "
          f"({100 * m['achieved_gflops'] / report['matmul_gflops']:.0f}% of matmul)")
    m["profile"] = profile_step(fused["model_obj"], fused["batch"], device)
    print("where a step's time goes: " + ", ".join(f"{g} {100 * share:.0f}%" for g, share in m["profile"].items()))

    report["tsne"] = [bench_tsne(n, device) for n in ((1000,) if args.quick else (1000, 5000, 10000))]
    print(f"\n{'t-SNE N':>8} {'ours s':>8} {'sklearn s':>10} {'ours trust':>11} {'sklearn trust':>14}")
    for row in report["tsne"]:
        print(f"{row['n']:>8} {row['ours_s']:>8.1f} {row.get('sklearn_s', float('nan')):>10.1f} "
              f"{row.get('ours_trust', float('nan')):>11.4f} {row.get('sklearn_trust', float('nan')):>14.4f}")

    report["ssim_psnr"] = bench_ssim(1000 if args.quick else 10000, device)
    row = report["ssim_psnr"]
    print(f"\nSSIM+PSNR of {row['n']} images: ours {row['ours_s']:.3f}s, scikit-image per image "
          f"{row.get('skimage_s', float('nan')):.1f}s (x{row.get('speedup', float('nan')):.0f})")

    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
