"""Test-suite setup: skip ``cuda`` tests without a GPU; keep unmarked tests in-process; one torch thread per xdist
worker; a download cache per test; shared fixtures (reference weights, a local HTTP server).

``tests`` is a package, so shared helpers are imported as ``tests.utils`` and shadow no other ``utils`` module.
"""
import os
import subprocess
import sys

import pytest

# Executables whose start makes a test ``slow`` or ``install`` (pytest.ini): shells and launchers, and any Python.
# Helpers such as gcc or git, which libraries call to describe the environment, are not counted.
_PROCESS_STARTERS = {'bash', 'sh', 'torchrun'}


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


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers), one torch thread per worker, also in the processes the
    tests start: two workers with two threads each on a 2-core machine would oversubscribe it."""
    if os.environ.get('PYTEST_XDIST_WORKER'):
        import torch
        os.environ['OMP_NUM_THREADS'] = '1'
        torch.set_num_threads(1)


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


@pytest.fixture(autouse=True)
def _own_download_cache(tmp_path_factory, monkeypatch):
    """Each test (and the processes it starts) downloads into a torch.hub cache of its own (``TORCH_HOME``), never
    into the user's ``~/.cache/torch`` nor into another test's; deleted after the test."""
    import shutil
    home = tmp_path_factory.mktemp('torch-home')
    monkeypatch.setenv('TORCH_HOME', str(home))
    yield
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _unmarked_tests_stay_in_process(request, monkeypatch):
    """Fail a test without the ``slow`` or ``install`` marker that starts a Python, shell or torchrun process: such
    runs take seconds each, and the quick tier (``make test-quick``) is the unmarked tests."""
    if request.node.get_closest_marker('slow') or request.node.get_closest_marker('install'):
        return
    real_init = subprocess.Popen.__init__

    def guarded_init(self, args, *rest, **kwargs):
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        command = str(argv[0]).split()[0] if argv and str(argv[0]).strip() else ''
        program = os.path.basename(command)
        python = program.startswith('python') or os.path.realpath(command) == os.path.realpath(sys.executable)
        if program in _PROCESS_STARTERS or python:
            pytest.fail(f'{request.node.nodeid} starts a process ({" ".join(map(str, argv))[:200]}): mark it '
                        f'@pytest.mark.slow (or install, for the installer), or call the code in-process.',
                        pytrace=False)
        real_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, '__init__', guarded_init)
