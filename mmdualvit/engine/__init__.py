"""The runtime layer on top of :mod:`mmdualvit.checkpoint`: the strict Runner, checkpoint hook, CPU autocast and the
command-line handling of tools/train.py and tools/test.py. Nothing under :mod:`mmdualvit.models` imports it."""
from .hooks import FiniteLossHook, PortableCheckpointHook
from .optim import CPUAutocastOptimWrapper
from .runner import StrictRunner

__all__ = ['CPUAutocastOptimWrapper', 'FiniteLossHook', 'PortableCheckpointHook', 'StrictRunner']
