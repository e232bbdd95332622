"""The four studies as their scripts run them (studies/*.sh), each end to end in its quick form on tiny data
(QUICK=1: 64 images, one epoch), and the README's study table: every command parses and names its epochs."""
import os
import re
import shlex
import subprocess

import pytest

import train
from conftest import make_cifar10, make_mnist_like

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the figures and report sections each study is about, beyond those every run gets
STUDIES = {
    "dae_vs_mae.sh": (["dae-mnist/figures/saliency.png", "mae-mnist/figures/attention.png",
                       "mae-cifar10-jitter/figures/attention.png", "dae-cifar10/figures/weights.png",
                       "mae-cifar10-scratch/finetune.pt"], ["## Classification accuracy", "### t-SNE radius, cifar10-jitter"]),
    "masking_tutorial.sh": (["mnist/figures/three_levels.png", "mnist/figures/linear_ae_vs_pca.png",
                             "mnist/figures/when_mae_fails.png"], ["## Filling in hidden pixels"]),
    "cifar10_assignment.sh": (["cifar10/figures/vae_vs_ae.png", "cifar10/figures/mask_ratios.png",
                               "cifar10/figures/cnn_vs_vit_masking.png", "cifar10/ae/figures/pca.png",
                               "cifar10/vae/figures/vae_samples.png"], ["## Classifying latents of noisy images"]),
    "mlp_report.sh": (["figures/best_psnr_per_epoch.png", 
                       "figures/psnr_vs_noise.png", "figures/loss_per_epoch.png"],
                      ["## Best and worst PSNR of the MLP autoencoders"]),
}


@pytest.mark.parametrize("script", STUDIES)
def test_a_study_runs_end_to_end_in_its_quick_form(tmp_path, script):
    """Every run of the study trains, analyze.py draws the study's figures, and, run again after one of its
    runs lost its results.json, the study keeps the finished runs and resumes that one alone."""
    data, out = tmp_path / "data", tmp_path / "out"
    make_mnist_like(str(data), "MNIST", seed=1)
    make_mnist_like(str(data), "FashionMNIST", seed=2)
    make_cifar10(str(data), seed=3)
    # the tiny CIFAR-10 files cannot match the real ones' md5 sums: torchvision checks only that they exist
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import os, torchvision.datasets.cifar\n"
        "torchvision.datasets.cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)\n")
    env = {**os.environ, "QUICK": "1", "DATA": str(data), "OUT": str(out), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(tmp_path / "site")}

    def run_study():
        result = subprocess.run(["bash", os.path.join("studies", script)], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=1800)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return [line.split("--out-dir ")[1] for line in result.stdout.splitlines() if line.startswith("== python")]

    runs = run_study()
    assert runs and all(os.path.isfile(os.path.join(run, "results.json")) for run in runs)
    figures, sections = STUDIES[script]
    for path in figures:
        assert (out / path).is_file(), path
    report = next(out.rglob("report.md")).read_text()
    for section in sections:
        assert section in report, section
    if script == "masking_tutorial.sh":  # as if the DAE had stopped after its last epoch
        os.remove(os.path.join(runs[5], "results.json"))
        assert run_study() == [runs[5]] and os.path.isfile(os.path.join(runs[5], "results.json"))


def readme_study_commands():
    readme = open(os.path.join(ROOT, "README.md")).read()
    table = readme[readme.index("## The four studies"):]
    return [command for row in table.splitlines() if row.startswith("|")
            for command in re.findall(r"`(python train\.py[^`]*)`", row)]


def test_every_command_of_the_readme_study_table_parses_and_names_its_epochs():
    commands = readme_study_commands()
    assert len(commands) >= 10
    for command in commands:
        argv = shlex.split(command)[2:]
        assert "--epochs" in argv, command
        train.parse_args(argv)  # a flag train.py does not take would exit here
