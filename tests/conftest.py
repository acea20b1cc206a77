import pytest
import torch

import flashinfer

HAS_GPU = torch.cuda.is_available() and flashinfer.built_with_cuda()
GPU_REASON = "needs a CUDA GPU and a CUDA build of flashinfer"

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_GPU, reason=GPU_REASON))]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped with a reason elsewhere)")


def pytest_collection_modifyitems(config, items):
    # GPU runs select with -k "not cpu" (the device parameter's id): a test whose own name says "cpu" would silently
    # drop out of them.
    named = sorted({item.originalname for item in items if "cpu" in (item.originalname or "").lower()})
    if named:
        raise pytest.UsageError(f"test names must not contain 'cpu' (GPU runs deselect -k 'not cpu'): {named}")
    skip = pytest.mark.skip(reason=GPU_REASON)
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
