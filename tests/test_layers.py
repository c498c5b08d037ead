"""The channels-last fast paths compute the same function as the NCHW reference paths."""

import torch

from cdc.layers import ChannelLayerNorm, LinearAttention


def test_layer_norm_and_attention_agree_across_memory_formats():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 12, 10)
    for module in (ChannelLayerNorm(16), LinearAttention(16)):
        with torch.no_grad():
            module.to(memory_format=torch.channels_last)
            ref = module(x.contiguous())
            fast = module(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
        assert fast.is_contiguous(memory_format=torch.channels_last) or fast.shape[1] == 1
