from .fileio import ATOMIC_BACKEND, AtomicLocalBackend, atomic_write, remove_stale_temporaries
from .hooks import PortableCheckpointHook, WeightsOnlyCheckpointHook
from .optim import CPUAutocastOptimWrapper
from .runner import CheckpointError, StrictRunner, load_model_weights, read_checkpoint

__all__ = ['ATOMIC_BACKEND', 'AtomicLocalBackend', 'CPUAutocastOptimWrapper', 'CheckpointError',
           'PortableCheckpointHook', 'StrictRunner', 'WeightsOnlyCheckpointHook', 'atomic_write',
           'load_model_weights', 'read_checkpoint', 'remove_stale_temporaries']
