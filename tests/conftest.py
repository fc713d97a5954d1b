"""Test-suite setup: skip ``cuda`` tests without a GPU; shared fixtures (reference weights, a local HTTP server).

``tests`` is a package, so shared helpers are imported as ``tests.utils`` and shadow no other ``utils`` module.
"""
import pytest


@pytest.fixture(scope='session')
def reference_weights():
    """``reference_weights(name)``: the synthetic weights of tests/data/refweights.py under the official key names
    of ``name`` (e.g. ``'dualvit_s'``), built once per test run.

    Returns a fresh dict each call; its tensors are shared by every test, so never modify them in place.
    """
    from tests.utils import make_state_dict, official_keys
    built = {}

    def get(name: str) -> dict:
        if name not in built:
            built[name] = make_state_dict(official_keys(name))
        return dict(built[name])

    return get


def pytest_collection_modifyitems(config, items):
    """Skip ``cuda``-marked tests on machines without a CUDA device, saying how to run them."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (run `make gpu-check` on a GPU machine)')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def http_root(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / 'www'``; stopped after the test (and never outlives it)."""
    import functools
    import http.server
    import threading
    root = tmp_path / 'www'
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.1), daemon=True)
    thread.start()
    try:
        yield root, f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
