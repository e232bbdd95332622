"""train.py end to end on tiny datasets written in torchvision's formats, and on real data when present."""
import json
import os
import subprocess
import sys

import pytest
import torch

import analyze
import runs
import train
from data import RunError
from ae import AE, AEConfig
from dae import DAE, DAEConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(data_dir, out_dir, *flags):
    train.main(["--data-dir", data_dir, "--out-dir", str(out_dir), "--device", "cpu", "--batch-size", "32",
                *flags])
    with open(os.path.join(out_dir, "results.json")) as f:
        return json.load(f)


def test_missing_dataset_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--model", "ae", "--dataset", "mnist",
                             "--data-dir", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: mnist is not in") and str(tmp_path / "empty") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_model_lists_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--model", "gan", "--dataset", "mnist"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'gan'" in err and all(f"'{name}'" in err for name in ("ae", "dae", "vae", "mcae", "mae"))


def test_unknown_eval_protocol_is_refused(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--model", "ae", "--dataset", "mnist", "--eval", "linear,svm"])
    assert "svm" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# models


@pytest.mark.parametrize("arch", ["mlp", "conv", "linear"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_ae_shapes_and_contract(arch, channels, size):
    model = AE(AEConfig(in_channels=channels, image_size=size, arch=arch))
    x = torch.rand(5, channels, size, size)
    loss, out = model(x)
    assert loss.ndim == 0 and out["recon"].shape == x.shape and torch.equal(out["input"], x)
    assert 0 <= out["recon"].min() and out["recon"].max() <= 1
    z = model.encode(x)
    assert z.shape == (5, int(torch.tensor(model.latent_shape).prod()))
    assert torch.allclose(model.decode(z).clamp(0, 1), out["recon"], atol=1e-6)


def test_seed_latent_shapes_are_expressible():
    """The DAE-vs-MAE study's DAE latents: 8x3x3 on MNIST, 48x4x4 on CIFAR-10; the MLP report's deep MLP ends in z."""
    assert AE(AEConfig(1, 28, channels=(16, 32, 64), latent_channels=8)).latent_shape == (8, 3, 3)
    assert AE(AEConfig(3, 32, latent_channels=48)).latent_shape == (48, 4, 4)
    deep = AE(AEConfig(1, 28, arch="mlp", hidden=(656, 512, 256, 128), latent_dim=15))
    widths = [m.out_features for m in deep.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [656, 512, 256, 128, 15]


@pytest.mark.parametrize("model_name", ["ae", "vae"])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_untrained_decoder_starts_at_the_mean_image(model_name, arch):
    """init_output_bias: before any step the output sits near the data's mean brightness, not at
    sigmoid(0) = 0.5, so the first steps need not drag every pixel down at once."""
    torch.manual_seed(0)
    mean_image = 0.3 * torch.rand(1, 28, 28)  # a dark dataset, as MNIST (mean 0.13)
    model_cls, config_cls = runs.MODELS[model_name]
    model = model_cls(config_cls(arch=arch))
    x = torch.rand(64, 1, 28, 28)
    gap_before = abs(model(x)[1]["recon"].mean().item() - mean_image.mean().item())  # ~0.35: sigmoid(~0)
    model.init_output_bias(mean_image)
    recon = model(x)[1]["recon"].detach()
    gap_after = abs(recon.mean().item() - mean_image.mean().item())
    assert gap_after < 0.1 and gap_after < gap_before / 3, (gap_before, gap_after)
    if arch == "mlp":  # one bias per output pixel: the mean image itself, up to the hidden layers' noise
        assert (recon.mean(0) - mean_image).abs().mean().item() < 0.05


def test_a_linear_ae_is_two_linear_maps():
    """The masking tutorial's linear AE, PCA's equal: one Linear each way, nothing between them, and a
    decoder that starts at the mean image itself (no sigmoid to invert)."""
    model = AE(AEConfig(arch="linear", latent_dim=16))
    assert [type(m).__name__ for m in model.modules() if not isinstance(m, (torch.nn.Sequential, AE))] == [
        "Flatten", "Linear", "Linear", "Unflatten"]
    mean_image = torch.rand(1, 28, 28)
    model.init_output_bias(mean_image)
    with torch.no_grad():
        model.decoder[0].weight.zero_()
    assert torch.allclose(model.decode(torch.randn(3, 16)), mean_image.expand(3, 1, 28, 28))


@pytest.mark.parametrize("l1", ["0", "1e-4"])
def test_results_l1_is_the_mean_absolute_error_of_the_reconstruction(data_dir, tmp_path, l1):
    """results.json's l1 is |reconstruction - image| per pixel, which lies between the MSE and its square
    root for pixels in [0, 1], whether or not --l1 adds a penalty on the code (logged as l1_penalty)."""
    results = run(data_dir, tmp_path / "r", "--model", "dae", "--arch", "mlp", "--dataset", "mnist", "--epochs", "1",
                  "--eval", "", "--l1", l1)
    assert results["mse"] <= results["l1"] <= results["mse"] ** 0.5
    log = json.loads(open(tmp_path / "r" / "log.jsonl").readline())
    assert ("l1_penalty" in log and "test_l1_penalty" in log) == (l1 != "0")


def test_l1_penalty_adds_to_the_loss():
    x = torch.rand(4, 1, 28, 28)
    torch.manual_seed(0)
    plain = AE(AEConfig(arch="mlp"))
    sparse = AE(AEConfig(arch="mlp", l1=0.5))
    sparse.load_state_dict(plain.state_dict())
    loss_plain, out_plain = plain(x)
    loss_sparse, out = sparse(x)
    assert torch.allclose(loss_sparse, loss_plain + 0.5 * out["l1_penalty"])
    assert torch.allclose(out["recon_loss"], loss_plain)
    assert not any(v.ndim == 0 for v in out_plain.values())  # one term: nothing more to log


def test_dae_noise_statistics():
    model = DAE(DAEConfig(noise_std=0.1))
    x = torch.full((64, 1, 28, 28), 0.5)  # far from 0 and 1, so clipping does not bend the statistics
    noisy, mask = model.corrupt(x)
    noise = noisy - x
    assert mask is None
    assert abs(noise.mean().item()) < 0.003
    assert abs(noise.std().item() - 0.1) < 0.003
    clipped, _ = DAE(DAEConfig(noise_std=1.0)).corrupt(x)
    assert clipped.min() == 0 and clipped.max() == 1


# -----------------------------------------------------------------------------
# end to end


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "cifar10", "cifar10-jitter"])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_train_end_to_end(data_dir, tmp_path, dataset, arch):
    out = tmp_path / "run"
    results = run(data_dir, out, "--model", "dae", "--dataset", dataset, "--arch", arch, "--epochs", "2",
                  "--eval", "linear,knn,finetune", "--finetune-epochs", "1", "--head", "mlp")
    for key in ("mse", "l1", "psnr", "ssim", "linear_acc", "knn_acc", "finetune_acc"):
        assert key in results
    for key in ("linear_acc", "knn_acc", "finetune_acc"):
        assert 0 <= results[key] <= 1
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [e["epoch"] for e in log] == [1, 2]
    assert set(log[0]) >= {"epoch", "train_loss", "test_loss", "psnr", "ssim", "seconds"}
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["model_name"] == "dae" and "optimizer" in ckpt


@pytest.mark.parametrize("model", ["ae", "dae", "vae", "mcae", "mae"])
def test_every_probe_stands_beside_its_baselines(data_dir, tmp_path, capsys, model):
    """Raw pixels and the untrained encoder, probed the same way, in results.json and in the table at the end
    of the run; the MAE's patch tokens too."""
    small = ["--embed-dim", "32", "--depth", "1"] if model == "mae" else []
    results = run(data_dir, tmp_path / model, "--model", model, "--dataset", "mnist", "--epochs", "1", *small)
    keys = [prefix + key for prefix in ("", "pixels_", "init_") for key in ("linear_acc", "knn_acc")]
    keys += ["tokens_linear_acc", "tokens_knn_acc"] if model == "mae" else []
    for key in keys:
        assert 0 <= results[key] <= 1, key
    assert ("tokens_linear_acc" in results) == (model == "mae")
    printed = capsys.readouterr().out
    for row in ("raw pixels, 784-d", "untrained encoder", "trained encoder"):
        assert row in printed
    assert f"{results['pixels_knn_acc']:.4f}" in printed and f"{results['init_linear_acc']:.4f}" in printed


def test_an_untrained_encoder_scores_its_own_baseline(data_dir, tmp_path):
    """--epochs 0 keeps the initial weights: the probes of the 'trained' encoder are those of the untrained
    one exactly, as they must be for a model that learned nothing (the same seed, the same draw)."""
    results = run(data_dir, tmp_path / "dead", "--model", "dae", "--dataset", "mnist", "--epochs", "0")
    assert results["linear_acc"] == results["init_linear_acc"] and results["knn_acc"] == results["init_knn_acc"]
    trained = run(data_dir, tmp_path / "trained", "--model", "dae", "--dataset", "mnist", "--epochs", "2")
    assert trained["init_linear_acc"] == results["init_linear_acc"]  # one baseline for every run of a seed
    assert trained["pixels_knn_acc"] == results["pixels_knn_acc"]


def test_resume_gives_the_same_weights(data_dir, tmp_path, monkeypatch):
    flags = ["--model", "dae", "--dataset", "mnist", "--epochs", "3", "--eval", "", "--seed", "7"]
    run(data_dir, tmp_path / "straight", *flags)

    saves = []
    real_save = runs.save_atomic

    def crash_after_first_epoch(obj, path):
        real_save(obj, path)
        saves.append(path)
        if len(saves) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "save_atomic", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(data_dir, tmp_path / "interrupted", *flags)
    monkeypatch.setattr(runs, "save_atomic", real_save)
    run(data_dir, tmp_path / "interrupted", *flags, "--resume")

    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "interrupted" / "ckpt.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    log = [json.loads(line) for line in open(tmp_path / "interrupted" / "log.jsonl")]
    assert [e["epoch"] for e in log] == [1, 2, 3]


def test_resume_without_checkpoint(data_dir, tmp_path):
    with pytest.raises(RunError, match="no checkpoint"):
        run(data_dir, tmp_path / "nothing", "--model", "ae", "--dataset", "mnist", "--resume")


def test_resume_with_another_model_or_shape(data_dir, tmp_path):
    run(data_dir, tmp_path / "r", "--model", "ae", "--dataset", "mnist", "--epochs", "1", "--eval", "")
    with pytest.raises(RunError, match="holds a ae model, not dae"):
        run(data_dir, tmp_path / "r", "--model", "dae", "--dataset", "mnist", "--resume")
    with pytest.raises(RunError, match="latent_channels: 32 -> 4"):
        run(data_dir, tmp_path / "r", "--model", "ae", "--dataset", "mnist", "--resume", "--latent-channels", "4")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    run(data_dir, out, "--model", "ae", "--dataset", "mnist", "--epochs", "1", "--eval", "")
    good = torch.load(out / "ckpt.pt", weights_only=True)
    monkeypatch.setattr(AE, "reconstruction_loss", lambda self, recon, x, mask: recon.sum() * float("nan"))
    with pytest.raises(FloatingPointError, match="in epoch 2; ckpt.pt keeps epoch 1"):
        run(data_dir, out, "--model", "ae", "--dataset", "mnist", "--epochs", "2", "--eval", "", "--resume")
    kept = torch.load(out / "ckpt.pt", weights_only=True)
    assert kept["epoch"] == 1
    for key in good["model"]:
        assert torch.equal(good["model"][key], kept["model"][key])


def test_help_shows_defaults():
    text = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300).stdout
    for flag in ("--model", "--dataset", "--data-dir", "--out-dir", "--epochs", "--batch-size", "--lr", "--seed",
                 "--device", "--train-size", "--eval", "--finetune-epochs", "--resume", "--arch", "--latent-dim",
                 "--noise-std", "--mask-ratio", "--patch-size"):
        assert flag in text
    text = " ".join(text.split())  # argparse wraps the help at the terminal's width
    assert "(default: 20, fewer where" in text and "(default: 64)" in text


def test_every_flag_says_what_it_does():
    """Each flag in --help has a description of its own, not only a default."""
    parser_flags = []
    real_parse = train.argparse.ArgumentParser.parse_args

    def capture(self, argv=None, namespace=None):
        parser_flags.extend(a for a in self._actions if a.option_strings and "--help" not in a.option_strings)
        return real_parse(self, argv, namespace)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train.argparse.ArgumentParser, "parse_args", capture)
        train.parse_args(["--model", "ae", "--dataset", "mnist"])
    assert 20 < len(parser_flags) <= 43
    for action in parser_flags:
        words = (action.help or "").split("(default")[0].strip()
        assert len(words) >= 8, f"{action.option_strings[0]} has no description: {action.help!r}"


@pytest.mark.parametrize("flags,says", [
    (["--model", "mae", "--noise-std", "0.5"], "--noise-std is for --model dae, not mae"),
    (["--model", "mae", "--arch", "mlp"], "--arch is for --model ae or dae or vae or mcae, not mae"),
    (["--model", "vae", "--l1", "1e-4"], "--l1 is for --model ae or dae or mcae, not vae"),
    (["--model", "dae", "--patch-size", "7"], "--patch-size is for --model mae, not dae"),
    (["--model", "ae", "--mask-ratio", "0.5"], "--mask-ratio is for --model mcae or mae, not ae"),
    (["--model", "ae", "--norm-pix-loss"], "--norm-pix-loss is for --model mae, not ae"),
    (["--model", "dae", "--no-norm-pix-loss"], "--no-norm-pix-loss is for --model mae, not dae"),
])
def test_a_flag_for_another_model_is_refused_in_one_line(tmp_path, capsys, flags, says):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--dataset", "mnist", "--out-dir", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1] and not (tmp_path / "out").exists()


# -----------------------------------------------------------------------------
# real data: the model really learns


def test_epochs_0_fine_tunes_from_scratch(data_dir, tmp_path):
    """The from-scratch baseline: no pretraining, the same fine-tuning."""
    results = run(data_dir, tmp_path / "scratch", "--model", "mae", "--dataset", "mnist", "--epochs", "0",
                  "--eval", "finetune", "--finetune-epochs", "1", "--embed-dim", "32", "--depth", "1")
    assert 0 <= results["finetune_acc"] <= 1 and results["epochs"] == 0
    # the untrained model is kept, so analyze.py can show the baseline beside the pretrained runs
    ckpt = torch.load(tmp_path / "scratch" / "ckpt.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and (tmp_path / "scratch" / "finetune.pt").exists()
    runs, analyses, _ = analyze.main([str(tmp_path / "scratch")])
    report = (tmp_path / "report.md").read_text()
    assert f"{results['finetune_acc']:.4f}" in report and analyses[0]["epochs"] == 0


def test_resume_takes_settings_that_keep_the_weights(data_dir, tmp_path, capsys):
    """A fine-tuning setting or another mask ratio uses the same weights: --resume takes it, says so, and
    fine-tunes the checkpoint with it."""
    flags = ["--model", "mae", "--dataset", "mnist", "--embed-dim", "32", "--depth", "1", "--epochs", "1"]
    run(data_dir, tmp_path / "m", *flags, "--eval", "")
    results = run(data_dir, tmp_path / "m", *flags, "--resume", "--finetune-mask-ratio", "0.5", "--eval", "finetune",
                  "--finetune-epochs", "1")
    assert "resuming with changed settings: finetune_mask_ratio: 0.0 -> 0.5" in capsys.readouterr().out
    assert 0 <= results["finetune_acc"] <= 1
    assert torch.load(tmp_path / "m" / "finetune.pt", weights_only=True)["config"]["finetune_mask_ratio"] == 0.5


def test_resume_keeps_the_settings_it_was_trained_with(data_dir, tmp_path, capsys):
    """`--resume --eval finetune` without the pretraining's flags goes on with the model as trained."""
    small = ["--model", "mae", "--dataset", "mnist", "--embed-dim", "32", "--depth", "1", "--epochs", "1"]
    run(data_dir, tmp_path / "m", *small, "--norm-pix-loss", "--mask-ratio", "0.5", "--eval", "")
    trained = json.loads((tmp_path / "m" / "results.json").read_text())
    capsys.readouterr()
    results = run(data_dir, tmp_path / "m", "--model", "mae", "--dataset", "mnist", "--epochs", "1", "--resume",
                  "--eval", "finetune", "--finetune-epochs", "1")
    assert "changed settings" not in capsys.readouterr().out
    config = torch.load(tmp_path / "m" / "finetune.pt", weights_only=True)["config"]
    assert config["norm_pix_loss"] and config["mask_ratio"] == 0.5 and config["embed_dim"] == 32
    assert results["psnr"] == pytest.approx(trained["psnr"])  # the same evaluation of the same model


def test_resume_turns_a_boolean_setting_either_way(data_dir, tmp_path):
    """--no-norm-pix-loss turns off what the checkpoint was trained with, --norm-pix-loss turns it on."""
    small = ["--model", "mae", "--dataset", "mnist", "--embed-dim", "32", "--depth", "1", "--epochs", "1"]
    for first, then, expected in (["--norm-pix-loss"], ["--no-norm-pix-loss"], False), ([], ["--norm-pix-loss"], True):
        out = tmp_path / str(expected)
        run(data_dir, out, *small, *first, "--eval", "")
        run(data_dir, out, *small, *then, "--resume", "--eval", "finetune", "--finetune-epochs", "1")
        assert torch.load(out / "finetune.pt", weights_only=True)["config"]["norm_pix_loss"] is expected


# -----------------------------------------------------------------------------
# the learning rate, the fine-tuning hint, a full disk


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_warm_up_is_a_tenth_of_the_run_and_the_lr_is_logged(data_dir, tmp_path, epochs):
    """The ViT's lr rises over the first tenth of the steps, reaches --lr, then decays: a 1-epoch run too."""
    steps = 100 * epochs
    factors = [train.lr_factor(step, steps, train.VIT_RECIPE["warmup"]) for step in range(steps)]
    assert factors[0] < 1 and max(factors) == 1.0 and factors.index(1.0) == steps // 10 - 1  # the last warm-up step
    assert factors[-1] < factors[steps // 10]
    run(data_dir, tmp_path / "out", "--model", "mae", "--dataset", "mnist", "--epochs", str(epochs), "--eval", "",
        "--lr", "2e-3")
    log = [json.loads(line) for line in open(tmp_path / "out" / "log.jsonl")]
    assert [e["epoch"] for e in log] == list(range(1, epochs + 1))
    assert all(0 < e["lr"] <= 2e-3 for e in log)


def test_the_fine_tuning_hint_gives_each_flag_once(data_dir, tmp_path):
    argv = ["--model", "mae", "--dataset", "mnist", "--epochs", "3", "--eval=linear", "--out-dir", "out/x",
            "--overwrite", "--data-dir", "my data"]
    pretrained, scratch = runs.finetune_hint(argv, "out/x", 3).splitlines()[1:]
    for command, epochs, out_dir in ((pretrained, "3", "out/x"), (scratch, "0", "out/x-scratch")):
        words = command.split()
        flags = [w for w in words if w.startswith("--")]
        assert len(flags) == len(set(flags)), command
        assert words[words.index("--epochs") + 1] == epochs and words[words.index("--out-dir") + 1] == out_dir
        assert words[words.index("--eval") + 1] == "finetune" and "'my data'" in command
        assert "--overwrite" not in words and ("--resume" in words) == (epochs != "0")


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(data_dir, tmp_path, monkeypatch):
    import builtins
    import errno

    out = tmp_path / "out"
    flags = ["--model", "dae", "--dataset", "mnist", "--epochs", "3", "--eval", ""]
    real_open, writes = builtins.open, []

    def full_after_one_checkpoint(path, mode="r", *args, **kwargs):
        if str(path).endswith("ckpt.pt.tmp"):
            writes.append(path)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runs, "open", full_after_one_checkpoint, raising=False)
    with pytest.raises(RunError) as error:
        run(data_dir, out, *flags)
    message = str(error.value)
    assert "\n" not in message and f"could not write {out / 'ckpt.pt'}" in message
    assert "MB): No space left on device; the previous one is kept" in message
    assert torch.load(out / "ckpt.pt", weights_only=True)["epoch"] == 1 and not (out / "ckpt.pt.tmp").exists()
    monkeypatch.undo()
    run(data_dir, out, *flags, "--resume")
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [e["epoch"] for e in log] == [1, 2, 3]
