"""Bad input gets one line and loses nothing: invalid flags are refused before any work (argparse's
style, exit 2), runtime failures a user can cause are one line (exit 1), and an interrupted run
resumed with --resume ends exactly where the uninterrupted one does."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

import runs
import train
from data import Data, RunError
from ae import AE
from test_train import ROOT, run

TINY = ["--model", "ae", "--dataset", "mnist", "--eval", ""]


def files_digest(directory):
    return {name: hashlib.md5(open(os.path.join(directory, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(directory))}


@pytest.mark.parametrize("flags,says", [
    (["--batch-size", "0"], "--batch-size: 0 is out of range: must be >= 1"),
    (["--epochs", "-1"], "--epochs: -1 is out of range"),
    (["--train-size", "-5"], "--train-size: -5 is out of range"),
    (["--noise-std", "-1"], "--noise-std: -1 is out of range"),
    (["--lr", "0"], "--lr: 0 is out of range: must be > 0"),
    (["--mask-ratio", "1.5"], "--mask-ratio: 1.5 is out of range: must be in [0, 1)"),
    (["--model", "mae", "--mask-ratio", "0.99"], "leaves none of the 49 patches visible"),
    (["--model", "mae", "--patch-size", "5"], "patch size 5 does not divide the image size 28"),
    (["--model", "mae", "--embed-dim", "30", "--num-heads", "4"], "divisible"),
    (["--hidden", "512,0"], "--hidden: widths must be positive"),
    (["--device", "gpu"], "--device: unknown device 'gpu'"),
])
def test_invalid_flags_are_refused_before_any_work(tmp_path, capsys, flags, says):
    argv = ["--model", "ae", "--dataset", "mnist", "--data-dir", str(tmp_path / "no-data"),
            "--out-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv + flags)  # argparse takes the last --model given
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert says in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TINY, "--data-dir", str(tmp_path), "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device cuda: torch sees no CUDA GPU here" in capsys.readouterr().err


def test_a_finished_run_is_not_overwritten(data_dir, tmp_path):
    out = tmp_path / "run"
    run(data_dir, out, *TINY, "--epochs", "1")
    before = files_digest(out)
    with pytest.raises(RunError, match="already holds a run .*--resume.*--overwrite"):
        run(data_dir, out, *TINY, "--epochs", "1")
    assert files_digest(out) == before
    run(data_dir, out, *TINY, "--epochs", "2", "--overwrite")  # asked for: starts over
    assert [json.loads(line)["epoch"] for line in open(out / "log.jsonl")] == [1, 2]


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "not a checkpoint"])
def test_a_damaged_checkpoint_is_one_line(data_dir, tmp_path, damage):
    out = tmp_path / "run"
    run(data_dir, out, *TINY, "--epochs", "1")
    good = open(out / "ckpt.pt", "rb").read()
    if damage == "truncated":
        (out / "ckpt.pt").write_bytes(good[:len(good) // 2])
    elif damage == "random bytes":
        (out / "ckpt.pt").write_bytes(os.urandom(4096))
    else:
        torch.save({"weights": torch.zeros(3)}, out / "ckpt.pt")
    with pytest.raises(RunError, match="ckpt.pt is damaged or not a nanoAE checkpoint"):
        run(data_dir, out, *TINY, "--epochs", "2", "--resume")


def test_a_missing_dataset_leaves_no_run_directory(tmp_path):
    with pytest.raises(RunError, match="mnist is not in"):
        train.main([*TINY, "--data-dir", str(tmp_path / "no-data"), "--out-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_runtime_errors_are_one_line_without_a_trace(data_dir, tmp_path):
    """From the shell: a damaged checkpoint and an --out-dir that cannot be a directory."""
    out = tmp_path / "run"
    run(data_dir, out, *TINY, "--epochs", "1")
    (out / "ckpt.pt").write_bytes(b"not a checkpoint")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out_dir, flags in [(out, ["--resume"]), (blocker / "run", [])]:
        result = subprocess.run([sys.executable, "train.py", *TINY, "--data-dir", data_dir, "--epochs", "2",
                                 "--batch-size", "32", "--out-dir", str(out_dir), *flags],
                                cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")


def test_nan_in_the_first_epoch_says_nothing_was_saved(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(AE, "reconstruction_loss", lambda self, recon, x, mask: recon.sum() * float("nan"))
    with pytest.raises(FloatingPointError, match="in epoch 1; nothing was saved"):
        run(data_dir, tmp_path / "nan", *TINY, "--epochs", "2")
    assert not (tmp_path / "nan" / "ckpt.pt").exists()


def test_results_accumulate_over_resumed_evaluations(data_dir, tmp_path):
    out = tmp_path / "run"
    first = run(data_dir, out, "--model", "ae", "--dataset", "mnist", "--epochs", "1", "--eval", "linear,knn")
    both = run(data_dir, out, "--model", "ae", "--dataset", "mnist", "--epochs", "1", "--eval", "finetune",
               "--finetune-epochs", "1", "--resume")
    assert both["linear_acc"] == first["linear_acc"] and both["knn_acc"] == first["knn_acc"]
    assert "finetune_acc" in both


# -----------------------------------------------------------------------------
# fault tests: stop a run somewhere, resume it, compare with the run that was never stopped

class Stop(BaseException):
    """Stands for kill -9: nothing after the point it is raised at runs."""


def stop_at_call(monkeypatch, owner, name, n, damage_file=False):
    """Make the n-th call of owner.name raise Stop (before it does anything)."""
    real = getattr(owner, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            if damage_file:  # the write stopped half way: a partial file at the path it was writing
                with open(args[1] + ".tmp", "wb") as f:
                    f.write(b"PK\x03\x04 half a checkpoint")
            raise Stop
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, wrapper)


@pytest.mark.parametrize("where", ["during an epoch", "during evaluation", "during the checkpoint write"])
@pytest.mark.parametrize("model", ["dae", "mcae"])
def test_resume_after_a_stop_ends_like_the_uninterrupted_run(data_dir, tmp_path, monkeypatch, where, model):
    flags = ["--model", model, "--dataset", "mnist", "--epochs", "3", "--eval", "linear", "--seed", "3"]
    straight = run(data_dir, tmp_path / "straight", *flags)

    if where == "during an epoch":  # the 2nd epoch's first batch (64 images / 32 a batch = 2 a epoch)
        stop_at_call(monkeypatch, Data, "train_batch", 3)
    elif where == "during evaluation":  # after the 2nd epoch's training, before its checkpoint
        stop_at_call(monkeypatch, train, "evaluate", 2)
    else:  # the 2nd epoch's checkpoint
        # the 3rd write: the log trimmed at the start, epoch 1's checkpoint, then epoch 2's
        stop_at_call(monkeypatch, runs, "write_atomic", 3, damage_file=True)
    with pytest.raises(Stop):
        run(data_dir, tmp_path / "stopped", *flags)
    monkeypatch.undo()
    resumed = run(data_dir, tmp_path / "stopped", *flags, "--resume")

    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "ckpt.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert resumed == straight
    log = [json.loads(line) for line in open(tmp_path / "stopped" / "log.jsonl")]
    assert [e["epoch"] for e in log] == [1, 2, 3]


def test_analyze_refuses_bad_run_directories_in_one_line(data_dir, tmp_path):
    good = tmp_path / "good"
    run(data_dir, good, *TINY, "--epochs", "1")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "ckpt.pt").write_bytes(b"\x00" * 100)
    (tmp_path / "empty").mkdir()
    for bad, says in [(tmp_path / "missing", "has no ckpt.pt"), (tmp_path / "empty", "has no ckpt.pt"),
                      (damaged, "is damaged or not a nanoAE checkpoint")]:
        result = subprocess.run([sys.executable, "analyze.py", str(good), str(bad)], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr
    assert not (good / "figures").exists()  # every directory is checked before any work


def test_a_dead_run_is_named_by_train_and_analyze(data_dir, tmp_path, monkeypatch, capsys):
    """A decoder that gives the same picture for every input (as a conv AE whose sigmoid saturated)."""
    import analyze
    from ae import ConvDecoder
    assert runs.dead_run_warning({"recon_spread": 0.1, "psnr": 20.0}) is None
    monkeypatch.setattr(ConvDecoder, "forward", lambda self, z: torch.zeros(len(z), 1, 28, 28) + 0 * z.sum())
    run(data_dir, tmp_path / "dead", *TINY, "--epochs", "1")
    printed = capsys.readouterr().out
    assert printed.count("warning: the reconstructions hardly differ between images") == 2  # epoch, results
    monkeypatch.undo()
    analyze.main([str(tmp_path / "dead"), "--tsne-iters", "50", "--tsne-per-class", "5"])
    assert "dead: warning: the reconstructions hardly differ" in capsys.readouterr().out
