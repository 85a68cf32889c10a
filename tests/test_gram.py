"""gram: the [K, K] Gram matrix, fp32+ accumulation whatever the input dtype."""

import pytest
import torch
from conftest import BACKEND_CASES

from csdfd import ops


@pytest.mark.parametrize("backend,device", BACKEND_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("k,p", [(2, 1), (2, 7), (3, 1000), (5, 4097), (2, 100_003)])
def test_gram_matches_float64(backend, device, dtype, k, p):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("triton kernels take fp32/bf16/fp16 gradients")
    g = torch.randn(k, p).to(dtype)
    want = g.double() @ g.double().T  # exact products of the stored values
    got = ops.gram(g.to(device), backend=backend).cpu()
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * p)


def test_gram_of_bf16_does_not_accumulate_in_bf16():
    g = torch.full((2, 4096), 1.0, dtype=torch.bfloat16)
    assert ops.gram(g)[0, 0].item() == 4096.0  # bf16 accumulation would stall at 256
