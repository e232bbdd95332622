"""
Speed of nanoAE on this machine: `python bench.py` (~10 minutes; `--quick`: a minute or two) prints tables
and writes bench.json: pretraining images/s of every model (a step as train.py takes it: forward,
backward, AdamW) and the share spent preparing batches; the MAE at its defaults: FLOPs a step, the
float32 matmul peak and the share of it the step reaches (`OMP_NUM_THREADS=1 python bench.py` for one
core), the speed-up of all threads over one (and of the step's matmuls alone), the operators the step's
time goes to, the matmuls' share of it and their own share of the peak, fine-tuning img/s
with and without dropping patches (--finetune-mask-ratio); the MAE at the DAE-vs-MAE study's MNIST shape;
t-SNE, textbook and fast, and SSIM, against scikit-learn and scikit-image (rows skipped without them).
"""
import argparse
import json
import math
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import metrics
import runs
import train
from data import Data, RunError, batches, load_data, to_float

# the DAE-vs-MAE study's shapes: MNIST MAE (patch 2, embed 64) and CIFAR-10 MAE (embed 192)
MAE_STUDY_MNIST = dict(patch_size=2, embed_dim=64, depth=6, num_heads=4, decoder_embed_dim=64, decoder_depth=2)
MAE_STUDY_CIFAR = dict(MAE_STUDY_MNIST, embed_dim=192)
SHAPES = {"mnist": (1, 28, False), "cifar10": (3, 32, False), "cifar10-jitter": (3, 32, True)}


def timed(fn, device, repeat=1):
    """Seconds per call of fn, after one warm-up call (GPU work is waited for: it runs asynchronously)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None
    fn(), sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeat


def fake_run(model_name, dataset, n, device, **config):
    """A model and n random uint8 images resident on the device, shaped like the dataset: speed does not
    care what the pixels show."""
    channels, size, jitter = SHAPES[dataset]
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (n,), device=device)
    model_cls, config_cls = runs.MODELS[model_name]
    model = model_cls(config_cls(in_channels=channels, image_size=size, **config)).to(device).train()
    return Data(images, labels, images[:1000], labels[:1000], jitter, [str(i) for i in range(10)]), model


def train_steps(loss_of, parameters, data, batch_size, device):
    """One pass over data.train_x of train.py's step: loss_of(batch indices), backward, AdamW step, in the
    precision --dtype auto picks for the device (float16 with its loss scaler on older GPUs)."""
    dtype = train.pick_dtype("auto", device)
    optimizer = train.adamw(parameters, 1e-4, (0.9, 0.95), 0.05, device)
    scaler = train.grad_scaler(device, dtype)
    perm = torch.randperm(len(data.train_x), device=device)
    for s in batches(len(perm), batch_size):
        with train.autocast(device, dtype):
            loss = loss_of(perm[s])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def bench_pretraining(model_name, dataset, batch_size, steps, device, **config):
    """Images/s of `steps` pretraining steps, and the share of that time spent preparing batches."""
    data, model = fake_run(model_name, dataset, steps * batch_size, device, **config)
    seconds = timed(lambda: train_steps(lambda idx: model(data.train_batch(idx))[0], model.parameters(), data,
                                        batch_size, device), device)
    data_seconds = timed(lambda: [data.train_batch(s) for s in batches(len(data.train_x), batch_size)], device)
    return {"model": model_name, "dataset": dataset, "batch_size": batch_size,
            "images_per_s": len(data.train_x) / seconds, "ms_per_step": 1000 * seconds / steps,
            "data_share": data_seconds / seconds}


def bench_finetuning(batch_size, steps, device, **config):
    """Images/s of MAE fine-tuning steps: the encoder on whole images (nothing masked) + a linear head."""
    data, model = fake_run("mae", "mnist", steps * batch_size, device, **config)
    head = torch.nn.Linear(model.config.embed_dim, 10).to(device)

    def loss_of(idx):
        return F.cross_entropy(head(model.encode(to_float(data.train_x[idx]))).float(), data.train_y[idx])

    seconds = timed(lambda: train_steps(loss_of, [*model.parameters(), *head.parameters()], data, batch_size,
                                        device), device)
    return len(data.train_x) / seconds


def matmul_peak(device, n=1024, repeat=20):
    """FLOP/s of a float32 n x n matmul: what this device's cores reach at best, the ceiling of a step."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / timed(lambda: a @ b, device, repeat)


def step_flops(model, x):
    """FLOPs of one training step's forward and backward on the batch x, counted by torch's flop counter
    (matmuls and convolutions; left out: the elementwise work and, on the CPU, the products inside the fused
    attention, about 5% more at the MAE's defaults)."""
    with FlopCounterMode(display=False) as counter:
        model(x)[0].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def bench_share_of_peak(batch_size, steps, device):
    """The MAE at its defaults, a step as train.py takes it: images/s, FLOPs a step, and the share of the
    float32 matmul peak it reaches (on a GPU the step runs in bfloat16, so the share can pass 1)."""
    row = bench_pretraining("mae", "mnist", batch_size, steps, device)
    _, model = fake_run("mae", "mnist", 1, device)
    flops = step_flops(model, torch.rand(batch_size, 1, 28, 28, device=device)) / batch_size
    peak = matmul_peak(device)
    return {**row, "mflop_per_image": flops / 1e6, "gflop_per_s": row["images_per_s"] * flops / 1e9,
            "peak_gflop_per_s": peak / 1e9, "share_of_peak": row["images_per_s"] * flops / peak}


def linear_shapes(model, x):
    """{(rows, in_features, out_features): count} of every nn.Linear a forward of x runs: the step's
    matmuls (the backward adds the gradient of each one's weight and, where its input needs one, its
    input's)."""
    shapes = {}

    def record(layer, inputs, output):
        key = (inputs[0].shape[:-1].numel(), layer.in_features, layer.out_features)
        shapes[key] = shapes.get(key, 0) + 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    model(x)
    for hook in hooks:
        hook.remove()
    return shapes


def matmul_thread_speedup(shapes, threads, device):
    """How much faster the step's own matmuls run on `threads` threads than on one: what threads can give
    the step's matmul part, at best. Each shape's three matmuls (forward x W^T, backward g W and g^T x),
    weighted by how often the step runs them."""
    seconds = {}
    for n in (1, threads):
        torch.set_num_threads(n)
        seconds[n] = 0.0
        for (rows, d_in, d_out), count in shapes.items():
            x, w, g = (torch.randn(rows, d_in, device=device), torch.randn(d_out, d_in, device=device),
                       torch.randn(rows, d_out, device=device))
            seconds[n] += count * timed(lambda: (x @ w.T, g @ w, g.T @ x), device, repeat=20)
    torch.set_num_threads(threads)
    return seconds[1] / seconds[threads]


def profile(fn, device, top=8):
    """Share of fn's time taken by its `top` costliest operators, by self time (e.g. in a training step:
    aten::addmm is a linear layer's forward, aten::mm its backward)."""
    cuda = torch.device(device).type == "cuda"
    with torch.profiler.profile() as prof:  # CPU, and CUDA where there is a GPU
        fn()
    # aten:: operators only: the time of wrappers (autograd nodes, modules) is in the operators they call
    # the GPU's own time: self_device_time_total since torch 2.4, self_cuda_time_total before
    device_time = "self_device_time_total" if hasattr(prof.key_averages()[0], "self_device_time_total") \
        else "self_cuda_time_total"
    times = {e.key: getattr(e, device_time) if cuda else e.self_cpu_time_total
             for e in prof.key_averages() if e.key.startswith("aten::")}
    total = sum(times.values())
    return {op: t / total for op, t in sorted(times.items(), key=lambda kv: -kv[1])[:top]}


def bench_tsne(n, device, textbook):
    """Seconds and trustworthiness of each t-SNE on the first n Fashion-MNIST test images (else blobs)."""
    try:
        x = to_float(load_data("fashion-mnist", "./data", "cpu").test_x[:n]).flatten(1)
    except RunError:
        x = torch.randn(10, 50)[torch.randint(0, 10, (n,))] * 3 + torch.randn(n, 50)
    x = (x - x.mean(0)) @ torch.linalg.svd(x - x.mean(0), full_matrices=False)[2][:50].T  # (n, 50) PCA
    row = {"n": n}
    runs = {"fast": lambda: metrics.tsne_fast(x, device=device)}
    if textbook:
        runs["textbook"] = lambda: metrics.tsne(x.to(device), seed=0)
    try:
        from sklearn.manifold import TSNE, trustworthiness
        runs["sklearn"] = lambda: TSNE(perplexity=30, init="pca", random_state=0).fit_transform(x.numpy())
    except ImportError:
        trustworthiness = None
    for name, run in runs.items():
        t0 = time.perf_counter()
        y = torch.as_tensor(run()).cpu().numpy()
        row[f"{name}_s"] = time.perf_counter() - t0
        if trustworthiness:
            row[f"{name}_trust"] = trustworthiness(x.numpy(), y, n_neighbors=10)
    return row


def bench_ssim(n, device, batch_size=64):
    """SSIM + PSNR over n image pairs, in train.py's evaluation batches, and scikit-image image by image
    (on a sample)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=gen)
    y = (x + 0.1 * torch.randn(n, 1, 28, 28, generator=gen)).clamp(0, 1)
    xd, yd = x.to(device), y.to(device)
    row = {"n": n, "ours_s": timed(lambda: [(metrics.ssim(yd[s], xd[s]), metrics.psnr(yd[s], xd[s]))
                                            for s in batches(n, batch_size)], device, 3)}
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError:
        return row
    sample = min(n, 500)
    t0 = time.perf_counter()
    for a, b in zip(x[:sample, 0].numpy(), y[:sample, 0].numpy()):
        structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
        peak_signal_noise_ratio(a, b, data_range=1)
    row["skimage_s"] = (time.perf_counter() - t0) * n / sample
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="(default: cuda, else cpu)")
    p.add_argument("--out", default="bench.json", help="(default: bench.json)")
    args = p.parse_args()
    device, steps = args.device, (3 if args.quick else 10)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else (platform.processor() or platform.machine())
    report = {"device": f"{device} ({name}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "pretraining": []}
    print(f"nanoAE bench on {report['device']}, torch {torch.__version__}")

    print(f"\n{'model':<6} {'dataset':<15} {'batch':>5} {'img/s':>8} {'ms/step':>8} {'data share':>10}")
    for dataset in SHAPES:
        for model_name in runs.MODELS:
            if model_name == "mae" and args.quick and dataset != "mnist":
                continue  # the 65-token, 192-wide CIFAR-10 MAE takes seconds a step on a CPU
            config = (MAE_STUDY_MNIST if dataset == "mnist" else MAE_STUDY_CIFAR) if model_name == "mae" else {}
            row = bench_pretraining(model_name, dataset, 256, steps, device, **config)
            report["pretraining"].append(row)
            print(f"{model_name:<6} {dataset:<15} {256:>5} {row['images_per_s']:>8.0f} {row['ms_per_step']:>8.1f} "
                  f"{100 * row['data_share']:>9.1f}%")

    m = report["mae_defaults"] = bench_share_of_peak(64, 3 * steps, device)
    print(f"\nMAE at its defaults, batch 64: {m['images_per_s']:.0f} img/s x {m['mflop_per_image']:.0f} MFLOP an "
          f"image = {m['gflop_per_s']:.1f} GFLOP/s, against a {m['peak_gflop_per_s']:.1f} GFLOP/s matmul peak: "
          f"{m['share_of_peak']:.2f} of the peak")
    threads = torch.get_num_threads()
    if device == "cpu" and threads > 1:  # how far the cores add up: the same steps on one thread, then on all
        torch.set_num_threads(1)
        one = bench_pretraining("mae", "mnist", 64, 3 * steps, device)["images_per_s"]
        torch.set_num_threads(threads)
        m["scaling"] = {"threads": threads, "one_thread_images_per_s": one, "speedup": m["images_per_s"] / one}
        _, model = fake_run("mae", "mnist", 1, device)
        m["scaling"]["matmuls_alone"] = matmul_thread_speedup(
            linear_shapes(model, torch.rand(64, 1, 28, 28, device=device)), threads, device)
        print(f"on {threads} threads {m['images_per_s']:.0f} img/s, on one {one:.0f}: {m['images_per_s'] / one:.2f}x; "
              f"the step's own matmuls alone: {m['scaling']['matmuls_alone']:.2f}x")
    data, model = fake_run("mae", "mnist", steps * 64, device)
    one_pass = lambda: train_steps(lambda idx: model(data.train_batch(idx))[0], model.parameters(), data, 64, device)
    one_pass()  # warm-up: the profile below sees training steps only
    shares = profile(one_pass, device, top=1000)
    m["profile"] = dict(list(shares.items())[:8])
    print("where its step's time goes: " + ", ".join(f"{op} {100 * s:.0f}%" for op, s in m["profile"].items()))
    if device == "cpu":  # there the flop counter counts only the matmuls, and the step runs in float32
        mm_share = sum(s for op, s in shares.items() if op in ("aten::mm", "aten::addmm", "aten::bmm"))
        m["matmul_time_share"] = mm_share
        m["matmul_share_of_peak"] = m["share_of_peak"] / mm_share  # their FLOPs over their time, over the peak
        m["share_of_peak_if_matmuls_at_peak"] = m["share_of_peak"] / (m["share_of_peak"] + 1 - mm_share)
        print(f"its matmuls take {100 * mm_share:.0f}% of the step, at {m['matmul_share_of_peak']:.2f} of the peak; "
              f"the rest (attention, GELU, LayerNorm, copies, AdamW) takes {100 * (1 - mm_share):.0f}%: with every "
              f"matmul at the full peak, the step would reach {m['share_of_peak_if_matmuls_at_peak']:.2f} of it")
    m = report["mae_study_mnist"] = {
        "images_per_s": bench_pretraining("mae", "mnist", 256, steps, device, **MAE_STUDY_MNIST)["images_per_s"],
        "finetune_images_per_s": bench_finetuning(256, steps, device, **MAE_STUDY_MNIST)}
    print(f"MAE at the DAE-vs-MAE study's MNIST shape, batch 256: pretraining {m['images_per_s']:.0f} img/s, "
          f"fine-tuning {m['finetune_images_per_s']:.0f} img/s")

    # the MAE at its defaults (patch 4: 49 patches), fine-tuned at the default batch: --finetune-mask-ratio
    # drops patches of every training image, and the step's cost falls with the tokens left
    ratios = (0.0, 0.5, 0.75)
    ft = report["mae_finetuning"] = {str(r): bench_finetuning(64, steps, device, finetune_mask_ratio=r) for r in ratios}
    print("MAE at its defaults, fine-tuning at batch 64: " +
          ", ".join(f"{ft[str(r)]:.0f} img/s with --finetune-mask-ratio {r}" for r in ratios))

    report["tsne"] = [bench_tsne(n, device, textbook=n <= 1000) for n in ((1000,) if args.quick else (1000, 5000))]
    print(f"\n{'t-SNE N':>8}" + "".join(f" {k:>10} {'trust':>6}" for k in ("textbook s", "fast s", "sklearn s")))
    for row in report["tsne"]:
        print(f"{row['n']:>8}" + "".join(f" {row.get(k + '_s', math.nan):>10.1f} {row.get(k + '_trust', math.nan):>6.3f}"
                                         for k in ("textbook", "fast", "sklearn")))
    row = report["ssim_psnr"] = bench_ssim(1000 if args.quick else 10000, device)
    print(f"\nSSIM+PSNR of {row['n']} images: ours {row['ours_s']:.3f}s in batches of 64, "
          f"scikit-image image by image {row.get('skimage_s', math.nan):.1f}s")
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
