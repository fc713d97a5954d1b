"""Test-suite setup: skip ``cuda`` tests without a GPU.

``tests`` is a package, so shared helpers are imported as ``tests.utils`` and shadow no other ``utils`` module.
"""


def pytest_collection_modifyitems(config, items):
    """Skip ``cuda``-marked tests on machines without a CUDA device, saying how to run them."""
    import pytest
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (run `make gpu-check` on a GPU machine)')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)
