"""The checkpoint reader and loaders under faults: special files, files that expand, weights that are not weights,
remote files that hang or never end, trust by flag only, and clear messages on the runner paths too."""
import argparse
import functools
import os
import re
import shutil
import socket
import sys
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmdualvit import checkpoint
from mmdualvit.checkpoint import CheckpointError, converter_cli, load_pretrained, read_checkpoint
from mmdualvit.models import DualViT
from tests.toy_runner import build_runner
from tests.utils import REPO, run_tool

TINY = dict(stem_hidden_dim=8, embed_dims=[16, 32, 32, 48], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 3],
            mlp_ratios=[2, 2, 2, 2])


@pytest.fixture(scope='module')
def tiny_sd():
    model = DualViT(arch=TINY)
    model.init_weights()
    return {k: v.clone() for k, v in model.state_dict().items()}


def run_python(code: str, timeout: float = 120, **env):
    """Run ``code`` in a fresh interpreter (a hang or a crash stays there); returns (returncode, output)."""
    proc = run_tool([sys.executable, '-c', code], cwd=REPO, env=env, timeout=timeout, check=False)
    return proc.returncode, proc.stdout


# ------------------------------------------------------------------------------------------------ special files
@pytest.mark.slow
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / 'weights.pth'
    os.mkfifo(fifo)
    code = ('from mmdualvit.checkpoint import read_checkpoint, CheckpointError\n'
            f'try: read_checkpoint({str(fifo)!r})\n'
            'except CheckpointError as e: print(e)\n')
    rc, out = run_python(code, timeout=60)  # blocking in open() would time out here
    assert rc == 0 and f"checkpoint path {str(fifo)!r} is a FIFO, not a regular file" in out, out


def test_device_and_symlink_loop_get_their_own_messages(tmp_path):
    with pytest.raises(CheckpointError, match=r"'/dev/zero' is a device, not a regular file; .* Copy the checkpoint"):
        read_checkpoint('/dev/zero')
    (tmp_path / 'a').symlink_to(tmp_path / 'b')
    (tmp_path / 'b').symlink_to(tmp_path / 'a')
    with pytest.raises(CheckpointError, match='is a symbolic link loop; point it at the real file'):
        read_checkpoint(str(tmp_path / 'a'))


# ------------------------------------------------------------------------------------------------ files that expand
def test_compressed_records_are_refused_before_loading(tmp_path, monkeypatch):
    torch.save({'w': torch.zeros(512, 512)}, tmp_path / 'plain.pth')
    with zipfile.ZipFile(tmp_path / 'plain.pth') as src, \
            zipfile.ZipFile(tmp_path / 'packed.pth', 'w', zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert (tmp_path / 'packed.pth').stat().st_size < 100_000 < (tmp_path / 'plain.pth').stat().st_size
    monkeypatch.setattr(torch, 'load', lambda *a, **k: pytest.fail('the file was unpickled'))
    with pytest.raises(CheckpointError, match=r'holds \d+ compressed records that expand to 1\.0 MiB; torch\.save '
                                              r'never compresses'):
        read_checkpoint(str(tmp_path / 'packed.pth'))


def test_broadcast_views_are_refused_by_reader_and_converter(tmp_path, tiny_sd):
    state = dict(tiny_sd)
    state['q'] = torch.zeros(1, 1).expand(*tiny_sd['q'].shape)  # stride 0: 4 stored bytes
    torch.save(state, tmp_path / 'view.pth')
    with pytest.raises(CheckpointError, match=r"tensor 'q' \(64, 16\) is a broadcast view of 4 stored bytes"):
        read_checkpoint(str(tmp_path / 'view.pth'))
    with pytest.raises(SystemExit):
        converter_cli(DualViT, 'test', [str(tmp_path / 'view.pth'), str(tmp_path / 'out.pth')])
    assert not (tmp_path / 'out.pth').exists()


def test_a_converter_refuses_tensors_that_share_one_storage(tmp_path, tiny_sd):
    """Every tensor a view of one storage the size of the largest: the file stores that once, a conversion would save
    each view with a storage of its own (the sum of all of them). A plain file converts."""
    largest = max(v.numel() for v in tiny_sd.values())
    shared = torch.randn(largest)
    state = {k: shared[:v.numel()].view(v.shape) for k, v in tiny_sd.items()}
    torch.save(state, tmp_path / 'shared.pth')
    stored = largest * 4 / 2**20
    written = sum(v.numel() for v in tiny_sd.values()) * 4 / 2**20
    with pytest.raises(CheckpointError, match=rf"stores {stored:.1f} MiB of tensor data, but its tensors share storage "
                                              rf'so that the converted file would hold {written:.1f} MiB'):
        checkpoint.convert_checkpoint_file(str(tmp_path / 'shared.pth'), str(tmp_path / 'out.pth'), DualViT)
    assert not (tmp_path / 'out.pth').exists()
    torch.save(tiny_sd, tmp_path / 'plain.pth')
    checkpoint.convert_checkpoint_file(str(tmp_path / 'plain.pth'), str(tmp_path / 'out.pth'), DualViT)


def test_a_safetensors_file_is_read_whatever_its_name(tmp_path, tiny_sd):
    save_file({k: v.contiguous() for k, v in tiny_sd.items()}, str(tmp_path / 'model.pth'))  # not a pickle
    read = read_checkpoint(str(tmp_path / 'model.pth'))
    assert all(torch.equal(read[k], tiny_sd[k]) for k in tiny_sd)


@pytest.mark.skipif(not hasattr(torch, 'float8_e4m3fn'), reason='torch without float8')
def test_float8_weights_are_checked_like_other_floats():
    """torch has no isfinite for float8: the value check must not fail with NotImplementedError."""
    own = {'w': torch.zeros(3)}
    finite = torch.tensor([1., 2., 3.]).to(torch.float8_e4m3fn)
    assert not checkpoint.compare_weights(own, {'w': finite}).bad_values
    assert checkpoint.compare_weights(own, {'w': torch.tensor([1., float('nan'), 3.]).to(torch.float8_e4m3fn)}
                                      ).not_finite == ['w']


def test_meta_tensors_are_refused(tmp_path):
    torch.save({'w': torch.empty(3, device='meta')}, tmp_path / 'meta.pth')
    with pytest.raises(CheckpointError, match=r"tensor 'w' is a meta tensor \(a shape without data\)"):
        read_checkpoint(str(tmp_path / 'meta.pth'))


# ------------------------------------------------------------------------------------------------ weights as weights
BAD_VALUES = {
    'nan': (lambda t: t.clone().fill_(float('nan')), r'1 tensors hold NaN or Inf \(e\.g\. q\)'),
    'inf': (lambda t: t.clone().fill_(float('inf')), r'1 tensors hold NaN or Inf \(e\.g\. q\)'),
    'int': (lambda t: t.to(torch.int64), r'1 tensors are not floating point .* \(e\.g\. q \(int64\)\)'),
    'bool': (lambda t: t.to(torch.bool), r'1 tensors are not floating point .* \(e\.g\. q \(bool\)\)'),
    'complex': (lambda t: t.to(torch.complex64), r'1 tensors are not floating point .* \(e\.g\. q \(complex64\)\)'),
}


@pytest.mark.parametrize('kind', sorted(BAD_VALUES))
def test_init_cfg_refuses_values_that_are_not_weights(tmp_path, tiny_sd, kind):
    spoil, expected = BAD_VALUES[kind]
    torch.save({**tiny_sd, 'q': spoil(tiny_sd['q'])}, tmp_path / 'bad.pth')
    model = DualViT(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'bad.pth')))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=expected + r'.*check_weights=False'):
        model.init_weights()
    assert all(torch.equal(before[k], v, ) for k, v in model.state_dict().items()), 'nothing may be half-loaded'


def test_weight_check_override_is_explicit(tmp_path, tiny_sd):
    torch.save({**tiny_sd, 'q': tiny_sd['q'].to(torch.float64)}, tmp_path / 'f64.pth')  # other float: fine
    load_pretrained(DualViT(arch=TINY), str(tmp_path / 'f64.pth'))
    torch.save({**tiny_sd, 'q': torch.full_like(tiny_sd['q'], float('nan'))}, tmp_path / 'nan.pth')
    model = DualViT(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nan.pth'),
                                             check_weights=False))
    model.init_weights()
    assert torch.isnan(model.q).all()


@pytest.mark.parametrize('kind', ['nan', 'int'])
def test_runner_load_refuses_values_that_are_not_weights(tmp_path, kind):
    runner = build_runner(tmp_path / 'work', max_iters=2)
    state = {k: v.clone() for k, v in runner.model.state_dict().items()}
    state['linear.weight'] = BAD_VALUES[kind][0](state['linear.weight'])
    torch.save({'state_dict': state}, tmp_path / 'bad.pth')
    with pytest.raises(CheckpointError, match=BAD_VALUES[kind][1].replace('q', r'linear\.weight')
                       + r'.*--skip-weight-check'):
        runner.load_checkpoint(str(tmp_path / 'bad.pth'))
    lenient = build_runner(tmp_path / 'work2', max_iters=2, check_weights=False)
    lenient.load_checkpoint(str(tmp_path / 'bad.pth'))


@pytest.mark.parametrize('kind', ['nan', 'int'])
def test_converter_refuses_values_that_are_not_weights(tmp_path, tiny_sd, capsys, kind):
    torch.save({**tiny_sd, 'q': BAD_VALUES[kind][0](tiny_sd['q'])}, tmp_path / 'bad.pth')
    with pytest.raises(SystemExit) as exit_info:
        converter_cli(DualViT, 'test', [str(tmp_path / 'bad.pth'), str(tmp_path / 'out.pth')])
    assert exit_info.value.code == 2 and 'pass --skip-weight-check' in capsys.readouterr().err
    assert not (tmp_path / 'out.pth').exists()
    converter_cli(DualViT, 'test', [str(tmp_path / 'bad.pth'), str(tmp_path / 'out.pth'), '--skip-weight-check'])
    assert (tmp_path / 'out.pth').exists()


# ------------------------------------------------------------------------------------------------ trust by flag only
@pytest.mark.slow
def test_environment_variable_does_not_turn_trust_on(tmp_path):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (a common global work-around) must not unpickle code in our paths."""
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    code = ('import os, torch\n'
            'class P:\n'
            f'    def __reduce__(self): return (os.system, ("touch {marker}",))\n'
            f'torch.save({{"state_dict": {{}}, "x": P()}}, {str(evil)!r})\n'
            'from mmdualvit.checkpoint import read_checkpoint, CheckpointError\n'
            'from tests.toy_runner import build_runner\n'
            'for load in (read_checkpoint, build_runner(' + repr(str(tmp_path / 'w')) + ').load_checkpoint):\n'
            f'    try: load({str(evil)!r}); print("LOADED")\n'
            '    except CheckpointError as e: print("REFUSED", e)\n')
    rc, out = run_python(code, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    assert rc == 0 and out.count('REFUSED') == 2 and 'LOADED' not in out, out[-3000:]
    assert not marker.exists()


def test_trust_is_a_per_call_flag(tmp_path):
    import datetime
    torch.save({'q': torch.zeros(1), 'when': datetime.date(2022, 8, 8)}, tmp_path / 'dated.pth')
    with pytest.raises(CheckpointError, match=r'needs datetime\.date to unpickle.*--trust-checkpoint'):
        read_checkpoint(str(tmp_path / 'dated.pth'))
    assert read_checkpoint(str(tmp_path / 'dated.pth'), trust=True)['when'].year == 2022
    runner = build_runner(tmp_path / 'w', max_iters=2, trust_checkpoint=True)
    assert runner._read(str(tmp_path / 'dated.pth'))['when'].year == 2022


@pytest.mark.parametrize('flag', ['--trust-checkpoint', '--trust-pickle'])
def test_converter_trust_flag_and_its_alias(tmp_path, tiny_sd, flag):
    import datetime
    torch.save({'state_dict': tiny_sd, 'args': argparse.Namespace(a=1), 'when': datetime.date(2022, 8, 8)},
               tmp_path / 'src.pth.tar')
    with pytest.raises(SystemExit):
        converter_cli(DualViT, 'test', [str(tmp_path / 'src.pth.tar'), str(tmp_path / 'out.pth')])
    summary = converter_cli(DualViT, 'test', [str(tmp_path / 'src.pth.tar'), str(tmp_path / 'out.pth'), flag])
    assert summary['kept'] == len(tiny_sd)


def test_one_fault_reads_the_same_on_the_init_cfg_and_the_whole_model_path(tmp_path, tiny_sd):
    """A file with NaN weights and a missing key: both loaders name the values first, in the same words."""
    from mmdualvit.checkpoint import load_checkpoint_weights
    state = {k: v.clone() for k, v in tiny_sd.items() if k != 'norm4.bias'}
    state['norm4.weight'][0] = float('nan')
    torch.save(state, tmp_path / 'nan.pth')
    common = (rf"checkpoint '{tmp_path}/nan.pth' holds values that are not usable weights: 1 tensors hold NaN or Inf "
              r'\(e\.g\. norm4\.weight\)\. Loading it would cast or propagate them silently.*')
    path = str(tmp_path / 'nan.pth')
    with pytest.raises(CheckpointError, match=common + 'set check_weights=False in the Pretrained init_cfg'):
        load_pretrained(DualViT(arch=TINY), path)
    with pytest.raises(CheckpointError, match=common + r'pass --skip-weight-check'):
        load_checkpoint_weights(DualViT(arch=TINY), read_checkpoint(path), path)


# ------------------------------------------------------------------------------------------------ remote files
@contextmanager
def tcp_server(handle):
    """A server on 127.0.0.1 whose connections run ``handle(conn)`` in threads; closed after the block."""
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(4)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=handle, args=(conn, stop), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.getsockname()[1]}'
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def silent(conn, stop):
    stop.wait(30)  # accepts, never answers
    conn.close()


def endless(conn, stop):
    conn.recv(4096)
    conn.sendall(b'HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n')
    chunk = b'\0' * 65536
    try:
        for _ in range(4096):  # at most 256 MiB, far past the limit used below; stops by itself
            if stop.is_set():
                break
            conn.sendall(chunk)
    except OSError:
        pass
    conn.close()


def test_a_server_that_never_answers_times_out(monkeypatch):
    monkeypatch.setenv('MMDUALVIT_DOWNLOAD_TIMEOUT', '1')
    with tcp_server(silent) as url:
        with pytest.raises(CheckpointError,
                           match=r'the server did not answer within 1 s; .*MMDUALVIT_DOWNLOAD_TIMEOUT'):
            read_checkpoint(f'{url}/w.pth')


def test_a_server_that_streams_forever_hits_the_size_limit(monkeypatch):
    monkeypatch.setenv('MMDUALVIT_DOWNLOAD_LIMIT_MB', '2')
    with tcp_server(endless) as url:
        with pytest.raises(CheckpointError, match=r'sent more than the 2 MiB limit; .*MMDUALVIT_DOWNLOAD_LIMIT_MB'):
            read_checkpoint(f'{url}/w.pth')
    cache = os.path.dirname(checkpoint.download_cache_path(f'{url}/w.pth'))
    assert [name for name in os.listdir(cache) if name != '.w.pth.lock'] == []  # no partial file (the lock may stay)


def dripping(conn, stop):
    """Declares 1 MB, then sends one byte every 0.1 s: each read returns within any timeout, the file never ends."""
    conn.recv(4096)
    try:
        conn.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n')
        while not stop.wait(0.1):
            conn.sendall(b'\0')
    except OSError:
        pass
    conn.close()


def test_a_server_that_drips_stops_at_the_minimum_rate(monkeypatch):
    monkeypatch.setenv('MMDUALVIT_DOWNLOAD_TIMEOUT', '1')
    monkeypatch.setenv('MMDUALVIT_DOWNLOAD_MIN_RATE_KB', '1')
    with tcp_server(dripping) as url:
        with pytest.raises(CheckpointError, match=r'arrives at 0\.0 KiB/s \(\d+ bytes in 1 s\), below the 1 KiB/s '
                                                  r'minimum; .*MMDUALVIT_DOWNLOAD_MIN_RATE_KB'):
            read_checkpoint(f'{url}/w.pth')


def truncating(conn, stop):
    """Declares 4096 bytes, sends 1000 and closes the connection."""
    conn.recv(4096)
    conn.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: 4096\r\n\r\n' + b'\0' * 1000)
    conn.close()


def test_a_partial_download_is_refused_and_not_cached():
    with tcp_server(truncating) as url:
        with pytest.raises(CheckpointError, match=r'closed the connection after 1000 of 4096 bytes; nothing was kept'):
            read_checkpoint(f'{url}/w.pth')
    assert not os.path.exists(checkpoint.download_cache_path(f'{url}/w.pth'))


def test_a_malformed_content_length_is_not_a_declared_size(tiny_sd, tmp_path):
    torch.save(tiny_sd, tmp_path / 'tiny.pth')

    def malformed(conn, stop):  # http.client ignores such a header; the size limit still bounds the body
        conn.recv(4096)
        conn.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: 2 MB\r\n\r\n' + (tmp_path / 'tiny.pth').read_bytes())
        conn.close()
    with tcp_server(malformed) as url:
        assert torch.equal(read_checkpoint(f'{url}/tiny.pth')['q'], tiny_sd['q'])


@pytest.mark.parametrize('value', ['abc', '0', '-5', 'nan', 'inf'])
def test_download_settings_come_from_the_environment_and_bad_ones_are_named(monkeypatch, value):
    monkeypatch.setenv('MMDUALVIT_DOWNLOAD_LIMIT_MB', '9')
    assert checkpoint.download_setting('MMDUALVIT_DOWNLOAD_LIMIT_MB') == 9.0
    monkeypatch.setenv('MMDUALVIT_DOWNLOAD_TIMEOUT', value)  # read when a download starts, not at import
    with pytest.raises(CheckpointError, match=rf"MMDUALVIT_DOWNLOAD_TIMEOUT='{value}' is not a positive number "
                                              r'\(seconds to wait .*\); set it to one such as 60 \(the default\)'):
        read_checkpoint('http://127.0.0.1:9/w.pth')


# ------------------------------------------------------------------------------------------------ download cache
def test_a_download_is_cached_and_read_from_the_cache_next_time(http_root, tiny_sd):
    root, url = http_root
    torch.save(tiny_sd, root / 'tiny.pth')
    first = read_checkpoint(f'{url}/tiny.pth')
    cached = checkpoint.download_cache_path(f'{url}/tiny.pth')
    assert cached.startswith(torch.hub.get_dir()) and os.path.isfile(cached)
    (root / 'tiny.pth').unlink()  # the server would answer 404 now
    second = read_checkpoint(f'{url}/tiny.pth')
    assert all(torch.equal(first[k], second[k]) for k in tiny_sd)


def test_two_urls_with_one_file_name_never_read_each_others_file(http_root, tiny_sd):
    """The cache is keyed by file name, as torch.hub's: each download records its URL, and a cached file that
    another URL fetched is fetched again (one fetched by torch.hub or mmengine records none and is read)."""
    root, url = http_root
    for run, scale in (('run1', 1), ('run2', 2)):
        (root / run).mkdir()
        torch.save({k: v * scale for k, v in tiny_sd.items()}, root / run / 'epoch_12.pth')
    for run, scale in (('run1', 1), ('run2', 2), ('run1', 1)):
        assert torch.equal(read_checkpoint(f'{url}/{run}/epoch_12.pth')['q'], tiny_sd['q'] * scale), run
    cached = Path(checkpoint.download_cache_path(f'{url}/run1/epoch_12.pth'))
    (cached.parent / f'.{cached.name}.url').unlink()  # as if torch.hub had fetched it
    (root / 'run1' / 'epoch_12.pth').unlink()  # the server would answer 404 now
    assert torch.equal(read_checkpoint(f'{url}/run2/epoch_12.pth')['q'], tiny_sd['q'])


def test_a_fetch_killed_at_any_step_leaves_no_file_another_url_takes_for_its_own(http_root, tiny_sd, monkeypatch):
    """run1's file is cached; fetching run2's file of the same name changes the cache folder step by step. A kill
    (no clean-up) after any step leaves that step's folder: from each, both URLs still read their own weights."""
    root, url = http_root
    for run, scale in (('run1', 1), ('run2', 2)):
        (root / run).mkdir()
        torch.save({k: v * scale for k, v in tiny_sd.items()}, root / run / 'epoch_12.pth')
    read_checkpoint(f'{url}/run1/epoch_12.pth')
    cache = Path(checkpoint.download_cache_path(f'{url}/run1/epoch_12.pth')).parent
    states = []

    def change(real, *args):  # os.replace / os.remove, then the folder as a kill right after would leave it
        real(*args)
        states.append({p.name: p.read_bytes() for p in cache.iterdir() if p.is_file()})
    with monkeypatch.context() as patched:
        for name in ('replace', 'remove'):
            patched.setattr(os, name, functools.partial(change, getattr(os, name)))
        read_checkpoint(f'{url}/run2/epoch_12.pth')
    assert len(states) >= 2  # at least: the file renamed into place, its URL recorded
    for step, state in enumerate(states):
        for run, scale in (('run1', 1), ('run2', 2), ('run1', 1)):
            shutil.rmtree(cache)
            cache.mkdir()
            for name, data in state.items():
                (cache / name).write_bytes(data)
            assert torch.equal(read_checkpoint(f'{url}/{run}/epoch_12.pth')['q'], tiny_sd['q'] * scale), (run, step)


def test_a_damaged_cached_file_is_named_with_its_cache_path(http_root, tiny_sd):
    root, url = http_root
    torch.save(tiny_sd, root / 'tiny.pth')
    cached = checkpoint.download_cache_path(f'{url}/tiny.pth')
    os.makedirs(os.path.dirname(cached))
    with open(cached, 'wb') as f:
        f.write(b'not a checkpoint')
    with pytest.raises(CheckpointError, match=rf'is truncated or corrupt .*Read from the download cache: '
                                              rf'{cached}; delete that file to fetch it again'):
        read_checkpoint(f'{url}/tiny.pth')


def test_a_hash_in_the_file_name_is_checked(http_root, tiny_sd):
    import hashlib
    root, url = http_root
    torch.save(tiny_sd, root / 'payload')
    digest = hashlib.sha256((root / 'payload').read_bytes()).hexdigest()
    (root / 'payload').rename(root / 'tiny-00000000.pth')
    with pytest.raises(CheckpointError, match=rf'has SHA-256 {digest[:16]}\.\.\., not the 00000000 its name '
                                              r'promises: .*nothing was kept'):
        read_checkpoint(f'{url}/tiny-00000000.pth')
    assert not os.path.exists(checkpoint.download_cache_path(f'{url}/tiny-00000000.pth'))
    (root / 'tiny-00000000.pth').rename(root / f'tiny-{digest[:8]}.pth')
    assert torch.equal(read_checkpoint(f'{url}/tiny-{digest[:8]}.pth')['q'], tiny_sd['q'])


def test_a_full_disk_during_a_download_is_named_and_nothing_is_kept(http_root, tiny_sd, monkeypatch):
    root, url = http_root
    torch.save(tiny_sd, root / 'tiny.pth')
    real_open = os.open

    def full_disk(path, flags, *args):  # the temporary's writes fail as on a full disk
        return real_open('/dev/full', os.O_WRONLY) if path.endswith('.mmdualvit-tmp') else real_open(path, flags, *args)
    monkeypatch.setattr(os, 'open', full_disk)
    cached = checkpoint.download_cache_path(f'{url}/tiny.pth')
    with pytest.raises(checkpoint.DownloadError, match=re.escape(
            f"disk full while downloading '{url}/tiny.pth' into '{cached}' (nothing was kept); free space there, or "
            f'set TORCH_HOME to a larger disk.')):
        read_checkpoint(f'{url}/tiny.pth')
    assert not os.path.exists(cached)


def test_a_cache_folder_that_cannot_be_written_is_named_before_the_download(http_root, tiny_sd):
    root, url = http_root
    torch.save(tiny_sd, root / 'tiny.pth')
    hub = Path(torch.hub.get_dir())
    hub.parent.mkdir(parents=True, exist_ok=True)
    hub.write_text('')  # a file where the cache folder should be
    with pytest.raises(checkpoint.DownloadError, match=re.escape(
            f"cannot download '{url}/tiny.pth' into the cache folder '{hub}/checkpoints': '{hub}' is a file, not a "
            f'directory; set TORCH_HOME to a writable folder, or download the file yourself and give its path.')):
        read_checkpoint(f'{url}/tiny.pth')


def test_processes_on_one_machine_take_turns_at_a_download_and_leftovers_are_removed(http_root, tiny_sd):
    """A second process (another rank of a distributed run, or another run) waits for the file lock of the first
    one's download, then reads its file without asking the server; the holder of the lock removes the temporary a
    killed download left."""
    from filelock import FileLock
    root, url = http_root
    torch.save(tiny_sd, root / 'tiny.pth')
    cached = checkpoint.download_cache_path(f'{url}/tiny.pth')
    os.makedirs(os.path.dirname(cached))
    leftover = Path(os.path.dirname(cached), f'.tiny.pth.{"0" * 32}.mmdualvit-tmp')
    leftover.write_bytes(b'half a download')
    first = FileLock(os.path.join(os.path.dirname(cached), '.tiny.pth.lock'))
    first.acquire()
    result = {}
    second = threading.Thread(target=lambda: result.update(read_checkpoint(f'{url}/tiny.pth')))
    second.start()
    second.join(1.0)
    assert second.is_alive() and not os.path.exists(cached) and leftover.exists()  # waiting, nothing fetched
    record = os.path.join(os.path.dirname(cached), '.tiny.pth.url')
    checkpoint._download(f'{url}/tiny.pth', cached, record)  # what the first run does while it holds the lock
    (root / 'tiny.pth').unlink()
    first.release()
    second.join(30)
    assert torch.equal(result['q'], tiny_sd['q']) and leftover.exists()  # the file was there: no download, no clean-up
    os.remove(cached)
    torch.save(tiny_sd, root / 'tiny.pth')
    read_checkpoint(f'{url}/tiny.pth')
    assert not leftover.exists()


def test_offline_pretrained_names_the_url_the_cache_and_the_local_alternative():
    url = 'http://127.0.0.1:9/sequencer2d_s.pth'  # the discard port: connection refused
    model = DualViT(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=url))
    cached = checkpoint.download_cache_path(url)
    with pytest.raises(checkpoint.DownloadError, match=rf"'{url}' could not be fetched .*Without internet here: "
                                                       rf'download {url} on another machine, then copy it to '
                                                       rf'{cached} .*--cfg-options model\.backbone\.init_cfg'):
        model.init_weights()


def test_model_zoo_names_resolve_to_their_url_and_load_safely(http_root, tiny_sd, monkeypatch, tmp_path):
    from mmengine.runner import checkpoint as mm
    root, url = http_root
    torch.save(tiny_sd, root / 'tiny.pth')
    monkeypatch.setattr(mm, 'get_external_models', lambda: {'tiny': f'{url}/tiny.pth'})
    monkeypatch.setattr(mm, 'get_deprecated_model_names', lambda: {'old_tiny': 'tiny'})
    model = DualViT(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://old_tiny'))
    model.init_weights()
    assert torch.equal(model.q, tiny_sd['q'])
    marker = tmp_path / 'pwned'

    class Payload:
        def __reduce__(self):
            return (os.system, (f'touch {marker}', ))

    torch.save({'state_dict': tiny_sd, 'x': Payload()}, root / 'evil.pth')
    monkeypatch.setattr(mm, 'get_torchvision_models', lambda: {'evil': f'{url}/evil.pth'})
    with pytest.raises(CheckpointError, match=r'needs posix\.system to unpickle'):
        build_runner(tmp_path / 'w', max_iters=2).load_checkpoint('torchvision://evil')
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"mmengine knows no model 'nope' under open-mmlab://; give the URL or "
                                              r'path of the file instead'):
        read_checkpoint('open-mmlab://nope')


@pytest.mark.parametrize('url,expected', [
    ('foo://bucket/w.pth', r"no mmengine file backend serves this scheme \('foo'\); use a local path"),
    ('s3://bucket/w.pth', r"file backend for this scheme needs a client that is not installed"),
])
def test_unusable_schemes_are_named_on_the_runner_path(tmp_path, url, expected):
    with pytest.raises(CheckpointError, match=expected):
        build_runner(tmp_path / 'w', max_iters=2).load_checkpoint(url)


def test_runner_path_names_http_errors_and_the_url(http_root, tmp_path):
    _, url = http_root
    with pytest.raises(CheckpointError, match=rf"checkpoint '{url}/absent.pth' could not be fetched "
                                              r'\(HTTPError: HTTP Error 404'):
        build_runner(tmp_path / 'w', max_iters=2).load_checkpoint(f'{url}/absent.pth')


# ------------------------------------------------------------------------------------------------ odd contents
@pytest.mark.parametrize('content,expected', [
    ([1, 2, 3], r"holds a list, not a dict of tensors"),
    ({'state_dict': {'linear.weight': 'not a tensor'}},
     r"holds no state_dict: 'state_dict' has keys \['linear\.weight'\] with values of type \['str'\]"),
    ({'state_dict': [torch.zeros(1)]}, r"holds no state_dict: the top level has keys \['state_dict'\] with values of "
                                       r"type \['list'\]"),
])
def test_runner_path_explains_files_that_hold_no_state_dict(tmp_path, content, expected):
    torch.save(content, tmp_path / 'odd.pth')
    with pytest.raises(CheckpointError, match=expected):
        build_runner(tmp_path / 'w', max_iters=2).load_checkpoint(str(tmp_path / 'odd.pth'))


def test_runner_path_calls_a_corrupt_safetensors_file_corrupt(tmp_path):
    save_file({'linear.weight': torch.zeros(1, 1)}, str(tmp_path / 'w.safetensors'))
    data = (tmp_path / 'w.safetensors').read_bytes()
    (tmp_path / 'w.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"w\.safetensors' is truncated or corrupt \(.*compare its SHA-256"):
        build_runner(tmp_path / 'w', max_iters=2).load_checkpoint(str(tmp_path / 'w.safetensors'))


def test_runner_path_missing_file_says_where_the_path_came_from(tmp_path):
    with pytest.raises(CheckpointError, match=r"'/nonexistent/iter_4\.pth' does not exist\. Check the path given to "
                                              r'load_from, --resume or tools/test\.py'):
        build_runner(tmp_path / 'w', max_iters=2).load_checkpoint('/nonexistent/iter_4.pth')


# ------------------------------------------------------------------------------------------------ converter outputs
def test_converter_checks_its_output_before_reading_the_input(tmp_path, tiny_sd, capsys, monkeypatch):
    torch.save(tiny_sd, tmp_path / 'src.pth')
    (tmp_path / 'a_file').write_text('x')
    cases = {
        str(tmp_path / 'src.pth'): 'is the input file; write the converted checkpoint to another path',
        str(tmp_path): 'is a directory; give a file name inside it',
        '': 'names no file',
        str(tmp_path / 'a_file' / 'out.pth'): f"{str(tmp_path / 'a_file')!r} is a file, not a directory",
    }
    monkeypatch.setattr(checkpoint, 'read_checkpoint', lambda *a, **k: pytest.fail('the input was read first'))
    for dst, expected in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            converter_cli(DualViT, 'test', [str(tmp_path / 'src.pth'), dst])
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err, dst
    assert torch.equal(torch.load(tmp_path / 'src.pth', weights_only=True)['q'], tiny_sd['q'])


def test_checkpoint_layer_imports_no_engine_and_models_import_no_engine():
    import ast

    def engine_imports(path):
        """Imports of mmdualvit.engine in ``path``: absolute, or relative ('.engine.runner', '..engine')."""
        found = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = (node.module or '').split('.')
                names = [a.name for a in node.names]
                if (node.level and ('engine' in parts or (parts == [''] and 'engine' in names))) \
                        or (node.module or '').startswith('mmdualvit.engine'):
                    found.append(node.module)
            elif isinstance(node, ast.Import):
                found += [a.name for a in node.names if a.name.startswith('mmdualvit.engine')]
        return found

    assert not engine_imports(REPO / 'mmdualvit' / 'checkpoint.py')
    for path in (REPO / 'mmdualvit' / 'models').rglob('*.py'):
        assert not engine_imports(path), path
