"""Devices and precision: --dtype auto picks what the hardware does well, every precision trains every model
(checked on the CPU, whose autocast takes bfloat16 and float16 too), --compile matches the eager step, and
a float16 run's loss scale survives --resume. The tests marked cuda run where a GPU is (bash .ci/gpu);
NANOAE_REQUIRE_CUDA=1 makes them fail instead of skip on a machine without one."""
import json
import os

import pytest
import torch

import runs
import train
from conftest import MNIST_DEV, needs_mnist_dev

cuda = pytest.mark.skipif(not torch.cuda.is_available() and not os.environ.get("NANOAE_REQUIRE_CUDA"),
                          reason="no CUDA GPU here")


@pytest.mark.parametrize("capability,expected", [((7, 5), "float16"), ((7, 0), "float16"), ((8, 0), "bfloat16"),
                                                 ((9, 0), "bfloat16")])
def test_auto_precision_follows_the_card(monkeypatch, capability, expected):
    """A T4 (7.5) or V100 (7.0) has no bfloat16 hardware: float16 with loss scaling; an A100 (8.0) and newer
    run bfloat16. torch.cuda.is_bf16_supported() says yes on a T4 (it counts emulation), so the capability
    decides."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert train.pick_dtype("auto", "cuda") == expected
    assert train.pick_dtype("auto", "cuda:1") == expected
    assert train.grad_scaler("cpu", expected).is_enabled() == (expected == "float16")  # the scaler follows


def test_auto_precision_is_float32_on_the_cpu_and_a_flag_wins():
    assert train.pick_dtype("auto", "cpu") == "float32"
    for dtype in ("float32", "bfloat16", "float16"):
        assert train.pick_dtype(dtype, "cpu") == dtype
    a = torch.randn(4, 4)
    with train.autocast("cpu", "float32"):
        assert (a @ a).dtype == torch.float32
    with train.autocast("cpu", "bfloat16"):
        assert (a @ a).dtype == torch.bfloat16


CONV = dict(channels=(8, 16), latent_channels=4)  # float16 is emulated on a CPU: small models keep the test short
SMALL = {"ae": CONV, "dae": CONV, "vae": CONV, "mcae": CONV,
         "mae": dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("model_name", list(SMALL))
def test_every_model_learns_in_every_precision(model_name, dtype):
    """train.py's step (autocast, the GradScaler, AdamW) on one batch of real-looking images, 30 times: the
    loss falls, and stays finite, in each precision."""
    torch.manual_seed(0)
    model_cls, config_cls = runs.MODELS[model_name]
    model = model_cls(config_cls(**SMALL[model_name]))
    x = torch.rand(16, 1, 7, 7).repeat_interleave(4, 2).repeat_interleave(4, 3)  # blobs, not white noise
    optimizer = train.adamw(model.parameters(), 1e-3, (0.9, 0.95), 0.0, "cpu")
    scaler = train.grad_scaler("cpu", dtype)
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same noise and masks every step: the loss of one fixed problem
        with train.autocast("cpu", dtype):
            loss, _ = model(x)
        assert loss.dtype == torch.float32  # losses in float32 whatever the forward ran in
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < 0.95 * losses[0], losses  # the VAE: nats, most of them the images' own entropy


def train_digits(out_dir, *flags):
    train.main(["--dataset", "mnist", "--data-dir", str(MNIST_DEV), "--out-dir", str(out_dir), "--device", "cpu",
                "--train-size", "640", "--epochs", "2", "--eval", "", *flags])
    return json.loads(open(os.path.join(out_dir, "results.json")).read())


@needs_mnist_dev
@pytest.mark.parametrize("model_flags", [["--model", "dae", "--conv-channels", "16,32,64", "--latent-channels", "8"],
                                         ["--model", "mae", "--embed-dim", "64", "--depth", "2"]], ids=["dae", "mae"])
def test_half_precision_trains_real_digits_as_float32_does(tmp_path, capsys, model_flags):
    """2 epochs of 640 real digits: bfloat16 and float16 (with its loss scaler) end within 1 dB of float32's
    test PSNR, and the run's first lines name the precision. (The DAE-vs-MAE study's small DAE and a
    narrower MAE than the default: float16 on a CPU is emulated, many times slower.)"""
    psnr = {}
    for dtype in ("float32", "bfloat16", "float16"):
        psnr[dtype] = train_digits(tmp_path / dtype, *model_flags, "--dtype", dtype)["psnr"]
        assert f"on the CPU (threads: 1), in {dtype}" in capsys.readouterr().out
    assert psnr["float32"] > 12, psnr  # learned something: the mean image alone scores about 11 dB
    for dtype in ("bfloat16", "float16"):
        assert abs(psnr[dtype] - psnr["float32"]) < 1.0, psnr


def test_a_float16_run_resumes_with_its_loss_scale(data_dir, tmp_path):
    """The GradScaler's state (its scale, grown or cut as gradients overflowed) is in ckpt.pt, and --resume
    continues from it instead of starting the scale over."""
    flags = ["--model", "dae", "--arch", "mlp", "--dataset", "mnist", "--data-dir", data_dir, "--device", "cpu",
             "--dtype", "float16", "--eval", "", "--out-dir", str(tmp_path / "run")]
    train.main([*flags, "--epochs", "1"])
    saved = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert saved["scaler"]["scale"] > 0
    saved["scaler"]["scale"] = 1024.0  # a scale the fresh scaler (65536) would not have
    torch.save(saved, tmp_path / "run" / "ckpt.pt")
    seen = []
    real_load = torch.amp.GradScaler.load_state_dict

    def spy(self, state):
        seen.append(state["scale"])
        real_load(self, state)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.amp.GradScaler, "load_state_dict", spy)
        train.main([*flags, "--epochs", "2", "--resume"])
    assert seen == [1024.0]


def test_compile_takes_the_same_first_epoch_as_eager(data_dir, tmp_path):
    """torch.compile fuses kernels but computes the same step: the first epoch's train loss within 1%."""
    flags = ["--model", "dae", "--arch", "mlp", "--hidden", "64", "--latent-dim", "16", "--dataset", "mnist",
             "--data-dir", data_dir, "--device", "cpu", "--epochs", "1", "--eval", ""]
    losses = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        train.main([*flags, *extra, "--out-dir", str(tmp_path / name)])
        losses[name] = json.loads(open(tmp_path / name / "log.jsonl").readline())["train_loss"]
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=0.01)


@cuda
@pytest.mark.parametrize("model", ["dae", "mae"])
def test_a_cuda_run_trains_and_saves_cpu_tensors(data_dir, tmp_path, capsys, model):
    """On a GPU: the run says its precision, trains, evaluates, probes and fine-tunes on the device, and its
    checkpoints hold CPU tensors, so a plain torch.load on a machine without a GPU reads them."""
    small = ["--embed-dim", "32", "--depth", "1"] if model == "mae" else []
    train.main(["--model", model, "--dataset", "mnist", "--data-dir", data_dir, "--device", "cuda", "--epochs", "2",
                "--eval", "linear,knn,finetune", "--finetune-epochs", "1", "--out-dir", str(tmp_path / "run"), *small])
    out = capsys.readouterr().out
    assert f"in {train.pick_dtype('auto', 'cuda')}" in out and "peak GPU memory" in out
    for name in ("ckpt.pt", "finetune.pt"):
        state = torch.load(tmp_path / "run" / name, weights_only=True)
        assert all(t.device.type == "cpu" for t in state["model"].values())


@cuda
def test_analyze_runs_on_the_gpu(data_dir, tmp_path):
    import analyze
    for model in ("vae", "mcae"):
        train.main(["--model", model, "--dataset", "mnist", "--data-dir", data_dir, "--device", "cuda", "--epochs",
                    "1", "--eval", "", "--out-dir", str(tmp_path / model)])
    _, _, drawn = analyze.main([str(tmp_path / "vae"), str(tmp_path / "mcae"), "--device", "cuda",
                                "--tsne-per-class", "5", "--tsne-iters", "250"])
    assert "interpolation" in drawn["vae"] and "error_heatmaps" in drawn["mcae"]
