"""Step-level benchmark: one CS-DFD training step of efficientnet_b4, batch 16 per stream at
256 x 256 (48 images in the shared forward), and the share of it spent in UVS + CGR.
GPU only: on a CPU the step takes seconds and the share is not what users will see.
"""

import pytest
import timm
import torch
from conftest import DEVICE, ROWS, device_name

from csdfd import FlatGrads, ops

pytestmark = pytest.mark.skipif(DEVICE != "cuda", reason="step benchmark needs a GPU")
BACKENDS = [b for b in ops.backends("cuda")] if DEVICE == "cuda" else []


def build(backbone: str = "efficientnet_b4"):
    torch.manual_seed(0)
    net = timm.create_model(backbone, pretrained=False, num_classes=0).cuda()
    width = net.num_features
    phi = torch.nn.Sequential(torch.nn.Linear(width, 512), torch.nn.GELU(),
                              torch.nn.Linear(512, 512)).cuda()
    head = torch.nn.Linear(512, 1).cuda()
    net = net.to(memory_format=torch.channels_last)
    theta = list(net.named_parameters()) + list(head.named_parameters())
    return net, phi, head, FlatGrads(theta, phi.named_parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_csdfd_step_share(backend):
    net, phi, head, fg = build()
    opt = torch.optim.AdamW(fg.params, lr=1e-4)
    x = torch.randn(48, 3, 256, 256, device="cuda").to(memory_format=torch.channels_last)
    y = torch.cat([torch.zeros(16), torch.ones(32)]).cuda()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    start, mid, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
    times = []
    for it in range(12):
        start.record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logit = head(phi(net(x))).squeeze(1).float()
        l1 = bce(logit[:32], y[:32])
        l2 = bce(torch.cat([logit[:16], logit[32:]]), torch.cat([y[:16], y[32:]]))
        fg.backward([l1, l2])
        mid.record()
        fg.step(backend=backend)
        end.record()
        opt.step()
        torch.cuda.synchronize()
        if it >= 2:
            times.append((start.elapsed_time(end), mid.elapsed_time(end)))
    step_ms = sorted(t[0] for t in times)[len(times) // 2]
    uvs_ms = sorted(t[1] for t in times)[len(times) // 2]
    # the fused op alone, back to back, without the step around it
    for _ in range(3):
        fg.step(backend=backend)
    torch.cuda.synchronize()
    start.record()
    for _ in range(20):
        fg.step(backend=backend)
    end.record()
    torch.cuda.synchronize()
    alone_ms = start.elapsed_time(end) / 20
    row = dict(op="csdfd_step", impl=backend, K=2, P=fg.numel, dtype="float32 (bf16 autocast)",
               seconds=step_ms / 1e3, uvs_cgr_ms=uvs_ms, uvs_cgr_alone_ms=alone_ms,
               share=alone_ms / step_ms, device=device_name())
    ROWS.append(row)
    print(f"\n{backend}: step {step_ms:.2f} ms, UVS+CGR {uvs_ms:.3f} ms in-step "
          f"({alone_ms:.3f} ms alone) = {100 * alone_ms / step_ms:.2f}% of the step")
