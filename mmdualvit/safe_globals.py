"""Loading mmengine training checkpoints under torch's ``weights_only=True`` default (torch >= 2.6).

mmengine 0.10.7 checkpoints pickle the message hub's ``HistoryBuffer`` objects (numpy arrays inside) and, through
``HistoryBuffer.__getstate__``, references to its statistics *functions*, which unpickle via ``builtins.getattr``.
Allow-listing ``getattr`` would let any pickle reach arbitrary attributes, so we do not. Instead:

- the data-only types such checkpoints hold (``HistoryBuffer``, numpy arrays, dtypes and scalars, and the
  ``argparse.Namespace`` of official Dual-ViT checkpoints) are allow-listed
  when ``mmdualvit`` is imported; none of them runs code when unpickled;
- :class:`PortableHistoryBuffer` pickles without the function references, and
  :class:`mmdualvit.engine.WeightsOnlyCheckpointHook` (in every mmdualvit config) swaps it in right before a
  checkpoint is written. Checkpoints our Runner writes therefore load with ``weights_only=True``: ``--resume``,
  ``load_from`` and ``tools/test.py`` work, while foreign files stay under the strict default.
"""
import argparse

import numpy as np
import torch
from mmengine.logging import HistoryBuffer


class PortableHistoryBuffer(HistoryBuffer):
    """A :class:`HistoryBuffer` whose pickle holds only data (the statistics methods live on the class)."""

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop('statistics_methods', None)
        return state

    @classmethod
    def from_buffer(cls, buffer: HistoryBuffer) -> 'PortableHistoryBuffer':
        portable = cls.__new__(cls)
        portable.__dict__.update({k: v for k, v in buffer.__dict__.items() if k != 'statistics_methods'})
        return portable


def _numpy_globals():
    # numpy 2 renamed numpy.core to numpy._core; numpy 1.26 has a partial numpy._core without multiarray.
    multiarray = np._core.multiarray if int(np.__version__.split('.')[0]) >= 2 else np.core.multiarray
    dtype_classes = [type(np.dtype(code)) for code in np.typecodes['All'] if code not in 'OMm']
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


# argparse.Namespace: the official Dual-ViT checkpoints (timm trainer) pickle their command-line arguments.
SAFE_GLOBALS = [argparse.Namespace, HistoryBuffer, PortableHistoryBuffer, *_numpy_globals()]
torch.serialization.add_safe_globals(SAFE_GLOBALS)
