"""bench.py's bookkeeping (never its timings): the profile adds up, a step's FLOPs are counted right."""
import pytest
import torch

import bench


def test_profile_of_a_tiny_mae_step():
    tiny = dict(patch_size=7, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1)
    row = bench.bench_pretraining("mae", "mnist", 8, 1, "cpu", **tiny)
    assert row["images_per_s"] > 0 and 0 < row["data_share"] < 1
    shares = bench.profile(lambda: bench.bench_pretraining("mae", "mnist", 8, 1, "cpu", **tiny), "cpu", top=1000)
    assert sum(shares.values()) == pytest.approx(1.0)  # every operator, each counted once
    assert {"aten::addmm", "aten::mm", "aten::gelu", "aten::gelu_backward"} <= set(shares)
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    assert len(bench.profile(lambda: torch.randn(64, 64) @ torch.randn(64, 64), "cpu", top=2)) == 2


def test_step_flops_count_a_linear_layer_three_times_over():
    """Forward x W^T: 2 N I O FLOPs; backward, the gradients of W and of x: twice that again."""
    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(30, 20, bias=False)

        def forward(self, x):
            return self.layer(x).square().mean(), {}

    x = torch.randn(8, 30, requires_grad=True)
    assert bench.step_flops(Linear(), x) == 3 * 2 * 8 * 30 * 20
    assert bench.matmul_peak("cpu", n=64, repeat=2) > 1e6


def test_linear_shapes_are_the_rows_and_widths_of_every_linear_layer():
    tiny = dict(patch_size=7, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=8, decoder_depth=1)
    _, model = bench.fake_run("mae", "mnist", 1, "cpu", **tiny)
    shapes = bench.linear_shapes(model, torch.rand(4, 1, 28, 28))
    # 16 patches, half hidden: 4 images x (1 + 8) encoder tokens, 4 x (1 + 16) decoder tokens
    assert shapes[(4 * 9, 16, 3 * 16)] == 2            # the encoder's qkv, once per block
    assert shapes[(4 * 17, 8, 3 * 8)] == 1             # the decoder's
    assert shapes[(4 * 17, 8, 7 * 7)] == 1             # the prediction of each patch's pixels
    assert sum(shapes.values()) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
