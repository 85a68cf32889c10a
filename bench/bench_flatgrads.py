"""How stream gradients reach the [K, P] buffer, three ways (efficientnet_b0, batch 8 per
stream, 224 x 224, CPU or GPU):

- ``views``: each .grad is a view into row k and ``autograd.backward(inputs=...)``
  accumulates in place (csdfd.FlatGrads);
- ``grad_copy``: ``torch.autograd.grad`` per stream, then a copy of size P into row k;
- ``batched``: one ``autograd.grad(..., is_grads_batched=True)`` over both losses (vmap over
  the backward), then a copy into the rows.
"""

import statistics
import time

import pytest
import timm
import torch
from conftest import DEVICE, ROWS, device_name, sync

from csdfd import FlatGrads

BATCH = 8


def setup():
    torch.manual_seed(0)
    net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=1).to(DEVICE)
    fg = FlatGrads(net.named_parameters())
    x = torch.randn(3 * BATCH, 3, 224, 224, device=DEVICE)
    y = torch.cat([torch.zeros(BATCH), torch.ones(2 * BATCH)]).to(DEVICE)
    return net, fg, x, y


def losses(net, x, y):
    out = net(x).squeeze(1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    i1 = torch.arange(2 * BATCH, device=x.device)
    i2 = torch.cat([torch.arange(BATCH), torch.arange(2 * BATCH, 3 * BATCH)]).to(x.device)
    return bce(out[i1], y[i1]), bce(out[i2], y[i2])


def views(net, fg, x, y):
    fg.backward(list(losses(net, x, y)))


def grad_copy(net, fg, x, y):
    l1, l2 = losses(net, x, y)
    for row, loss in enumerate((l1, l2)):
        grads = torch.autograd.grad(loss, fg.params, retain_graph=row == 0)
        torch._foreach_copy_(fg.rows[row], list(grads))


def batched(net, fg, x, y):
    l1, l2 = losses(net, x, y)
    eye = torch.eye(2, device=x.device)
    grads = torch.autograd.grad(torch.stack([l1, l2]), fg.params, eye, is_grads_batched=True)
    for row in range(2):
        torch._foreach_copy_(fg.rows[row], [g[row] for g in grads])


@pytest.mark.parametrize("how", [views, grad_copy, batched], ids=lambda f: f.__name__)
def test_stream_gradients(benchmark, how):
    net, fg, x, y = setup()
    try:
        how(net, fg, x, y)
    except Exception as exc:  # noqa: BLE001 - report what fails, e.g. vmap over BatchNorm
        ROWS.append(dict(op="stream_grads", impl=how.__name__, K=2, P=fg.numel,
                         seconds=float("nan"),
                         error=f"{type(exc).__name__}: {str(exc)[:120]}", device=device_name()))
        pytest.skip(f"{how.__name__} fails on efficientnet_b0: {type(exc).__name__}: {exc}")
    ref = fg.buf.clone()
    benchmark.pedantic(lambda: how(net, fg, x, y), rounds=3, iterations=1, warmup_rounds=1)
    torch.testing.assert_close(fg.buf, ref, rtol=1e-3, atol=1e-5)  # same gradients every way
    ROWS.append(dict(op="stream_grads", impl=how.__name__, K=2, P=fg.numel,
                     seconds=benchmark.stats.stats.median, device=device_name()))


def test_interleaved_comparison():
    """The three ways in turn, several times, so drift (warm-up, thermal, other load) hits them
    alike; rows report the median step time of each."""
    net, fg, x, y = setup()
    ways = [views, grad_copy, batched]
    for how in ways:
        how(net, fg, x, y)
    times: dict = {how.__name__: [] for how in ways}
    for _ in range(4):
        for how in ways:
            sync()
            t0 = time.perf_counter()
            how(net, fg, x, y)
            sync()
            times[how.__name__].append(time.perf_counter() - t0)
    for name, ts in times.items():
        ROWS.append(dict(op="stream_grads (interleaved)", impl=name, K=2, P=fg.numel,
                         seconds=statistics.median(ts), device=device_name()))
