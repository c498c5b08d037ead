"""The channels-last fast paths compute the same function as the NCHW reference paths."""

import torch

from cdc.models.layers import ChannelLayerNorm, LinearAttention


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


def test_linear_attention_is_the_papers_formula():
    """The re-associated attention is ``to_out(C^-1/2 q softmax_positions(k)^T v)`` (Shen et al.), with
    its gradients, in both memory formats."""
    torch.manual_seed(0)
    attn = LinearAttention(8)
    torch.nn.init.normal_(attn.to_out.bias)
    x = torch.randn(2, 8, 6, 5, requires_grad=True)

    def reference(x):
        b, c, h, w = x.shape
        q, k, v = attn.to_qkv(x).reshape(b, 3, c, h * w).unbind(1)
        out = (q.transpose(1, 2) * c**-0.5) @ (k.softmax(-1) @ v.transpose(1, 2))  # B x HW x C
        return attn.to_out(out.transpose(1, 2).reshape(b, c, h, w))

    expected = reference(x)
    grads = torch.autograd.grad(expected.square().sum(), [x, *attn.parameters()])
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.detach().contiguous(memory_format=layout).requires_grad_()
        out = attn(xl)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        for got, want in zip(torch.autograd.grad(out.square().sum(), [xl, *attn.parameters()]), grads, strict=True):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_the_unets_context_share_computed_once_gives_the_same_step():
    """``condition(pyramid)`` then ``conditioned=True`` is the U-Net on the concatenated input: for
    skips that are convolutions and (paper preset, level 1: 64 + 64 = 128 channels) identities."""
    from cdc.config import load_config
    from cdc.models.codec import CDCCodec

    torch.manual_seed(0)
    codec = CDCCodec(load_config("paper")).eval()
    skips = [type(level.res1.skip).__name__ for level in codec.unet.downs]
    assert "Identity" in skips and "Conv2d" in skips
    for p in codec.unet.parameters():  # trained-looking weights: the zero-initialised head would hide errors
        torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        pyramid = codec.context(torch.randn(1, codec.config.model.latent_channels, 4, 4))
        x, tau = torch.randn(1, 3, 64, 64), torch.tensor([0.3])
        whole = codec.unet(x, tau, pyramid)
        step = codec.unet(x, tau, codec.unet.condition(pyramid), conditioned=True)
    assert whole.abs().max() > 0.1
    torch.testing.assert_close(step, whole, atol=1e-4 * whole.abs().max().item(), rtol=1e-4)
