"""bench.py's bookkeeping (never its timings): operator grouping of the profile, and that it adds up."""
import pytest
import torch

import bench


@pytest.mark.parametrize("name,group", [
    ("aten::addmm", "matmul"), ("aten::mm", "matmul"), ("aten::bmm", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention (SDPA)"),
    ("aten::gelu_backward", "GELU"), ("aten::native_layer_norm", "layer norm"),
    ("aten::_softmax", "softmax"), ("aten::gather", "masking (sort, gather, scatter)"),
    ("aten::copy_", "copies (copy_, cat, contiguous)"), ("aten::_foreach_addcdiv_", "optimizer (AdamW)"),
    ("aten::add", "elementwise and reductions"), ("aten::empty", "other"),
])
def test_op_group(name, group):
    assert bench.op_group(name) == group


def test_profile_of_a_tiny_mae_step_adds_up():
    row, model = bench.bench_pretraining("mae", "mnist", 8, 1, "cpu", patch_size=7, embed_dim=16, depth=1,
                                         num_heads=2, decoder_embed_dim=16, decoder_depth=1)
    assert row["images_per_s"] > 0 and 0 < row["data_share"] < 1
    shares = bench.profile_step(model, torch.rand(8, 1, 28, 28), "cpu", steps=1)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert {"matmul", "attention (SDPA)", "GELU", "layer norm"} <= set(shares)
    assert list(shares.values()) == sorted(shares.values(), reverse=True)


def test_written_out_attention_computes_what_the_fused_one_does():
    attention = bench.mae_module.Attention(16, 2)
    x = torch.randn(3, 5, 16)
    assert torch.allclose(bench.written_out_attention(attention, x), bench.FUSED_ATTENTION(attention, x), atol=1e-5)
