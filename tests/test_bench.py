"""bench.py's bookkeeping (never its timings): the profile adds up, the attention paths agree."""
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


def test_written_out_attention_computes_what_the_fused_one_does():
    attention = bench.mae_module.Attention(16, 2)
    x = torch.randn(3, 5, 16)
    assert torch.allclose(bench.written_out_attention(attention, x), bench.FUSED_ATTENTION(attention, x), atol=1e-5)
