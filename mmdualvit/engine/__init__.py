from .fileio import ATOMIC_BACKEND, AtomicLocalBackend
from .hooks import WeightsOnlyCheckpointHook
from .optim import CPUAutocastOptimWrapper

__all__ = ['ATOMIC_BACKEND', 'AtomicLocalBackend', 'CPUAutocastOptimWrapper', 'WeightsOnlyCheckpointHook']
