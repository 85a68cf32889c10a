"""FlatGrads: stream gradients land in their rows with no copy, .grad aliases the buffer, and a
steady-state step allocates nothing of size P."""

import pytest
import torch

from csdfd import FlatGrads


def tiny_model():
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    )
    phi = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.GELU(), torch.nn.Linear(5, 5))
    head = torch.nn.Linear(5, 1)
    return backbone, phi, head


def losses(backbone, phi, head, x):
    logits = head(phi(backbone(x))).squeeze(1)
    y = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    idx1, idx2 = [0, 1, 2, 3], [0, 1, 4, 5]
    return bce(logits[idx1], y[idx1]), bce(logits[idx2], y[idx2])


def build():
    backbone, phi, head = tiny_model()
    theta = list(backbone.named_parameters()) + list(head.named_parameters())
    return backbone, phi, head, FlatGrads(theta, phi.named_parameters())


def test_segments_and_split():
    backbone, phi, head, fg = build()
    n_phi = sum(p.numel() for p in phi.parameters())
    assert fg.numel - fg.split == n_phi
    assert [s.projection for s in fg.segments] == sorted(s.projection for s in fg.segments)
    assert fg.segments[-1].offset + fg.segments[-1].numel == fg.numel


def test_rows_hold_each_streams_gradient():
    backbone, phi, head, fg = build()
    x = torch.randn(6, 3, 8, 8)
    l1, l2 = losses(backbone, phi, head, x)
    grads = [torch.autograd.grad(loss, fg.params, retain_graph=True) for loss in (l1, l2)]
    want = [torch.cat([g.flatten() for g in gs]) for gs in grads]
    fg.backward([l1, l2])
    torch.testing.assert_close(fg.buf[0], want[0])
    torch.testing.assert_close(fg.buf[1], want[1])


def test_backward_sum_writes_the_summed_gradient_into_row0_only():
    """OS between logging steps: one backward of L1 + L2 into row 0 (stale values there are
    overwritten, row 1 is left alone, every .grad views row 0)."""
    backbone, phi, head, fg = build()
    l1, l2 = losses(backbone, phi, head, torch.randn(6, 3, 8, 8))
    want = torch.cat([g.flatten() for g in torch.autograd.grad(l1 + l2, fg.params,
                                                               retain_graph=True)])
    fg.buf.fill_(7.0)
    fg.backward_sum(l1 + l2)
    torch.testing.assert_close(fg.buf[0], want)
    assert bool((fg.buf[1] == 7.0).all())
    assert all(p.grad.data_ptr() == v.data_ptr() for p, v in zip(fg.params, fg.rows[0],
                                                                  strict=True))


@pytest.mark.parametrize("mode", ["step", "sum"])
def test_grad_views_alias_row0_and_optimizer_steps(mode):
    backbone, phi, head, fg = build()
    opt = torch.optim.SGD(fg.params, lr=0.1)
    x = torch.randn(6, 3, 8, 8)
    before = [p.detach().clone() for p in fg.params]
    fg.backward(list(losses(backbone, phi, head, x)))
    fg.step() if mode == "step" else fg.sum_streams()
    combined = fg.buf[0].clone()
    for p, seg in zip(fg.params, fg.segments, strict=True):
        assert p.grad.data_ptr() == fg.buf[0, seg.offset:].data_ptr()
    opt.step()
    delta = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, fg.params, strict=True)])
    torch.testing.assert_close(delta, 0.1 * combined)


def test_steady_state_allocates_nothing_of_size_p():
    backbone, phi, head, fg = build()
    opt = torch.optim.SGD(fg.params, lr=0.01, momentum=0.9)
    x = torch.randn(6, 3, 8, 8)
    ptr, diag_ptr = fg.buf.data_ptr(), fg.diag.data_ptr()
    grad_ptrs = None
    for _ in range(3):
        opt.zero_grad(set_to_none=False)
        fg.backward(list(losses(backbone, phi, head, x)))
        stats = fg.step()
        opt.step()
        ptrs = [p.grad.data_ptr() for p in fg.params]
        grad_ptrs = grad_ptrs or ptrs
        assert ptrs == grad_ptrs  # .grad keeps aliasing the same row-0 storage
        assert fg.buf.data_ptr() == ptr and stats.diag.data_ptr() == diag_ptr


def test_bad_construction():
    backbone, phi, head = tiny_model()
    with pytest.raises(ValueError, match="twice"):
        FlatGrads(phi.parameters(), phi.parameters())
    with pytest.raises(ValueError, match="no trainable"):
        FlatGrads([])
    with pytest.raises(ValueError, match="expected 2 losses"):
        FlatGrads(phi.parameters()).backward([torch.tensor(1.0, requires_grad=True)])


def test_rows_are_64_byte_aligned_for_any_p():
    layer = torch.nn.Linear(3, 1)  # P = 4 parameters
    fg = FlatGrads(layer.parameters(), k=3)
    assert fg.buf.shape == (3, 4)
    assert all(fg.buf[r].data_ptr() % 64 == 0 for r in range(3))


def test_channels_last_grads_keep_the_parameter_layout():
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    fg = FlatGrads(conv.named_parameters())
    x = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
    want = torch.autograd.grad(conv(x).square().mean(), conv.weight)[0]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "gradient layout contract" warning
        fg.backward([conv(x).square().mean(), conv(x).abs().mean()])
    assert conv.weight.grad.stride() == conv.weight.stride()
    torch.testing.assert_close(conv.weight.grad, want)
    assert conv.weight.grad.data_ptr() == fg.buf[0].data_ptr()
