from .hooks import WeightsOnlyCheckpointHook
from .optim import CPUAutocastOptimWrapper

__all__ = ['CPUAutocastOptimWrapper', 'WeightsOnlyCheckpointHook']
