"""Mixed precision on machines without a GPU."""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper

from ..registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUAutocastOptimWrapper(OptimWrapper):
    """:class:`~mmengine.optim.OptimWrapper` running forward passes under ``torch.autocast('cpu', bfloat16)``.

    mmengine's ``AmpOptimWrapper`` requires CUDA/NPU/MLU; ``tools/train.py --amp`` selects this wrapper on CPU-only
    machines. bfloat16 keeps float32's exponent range, so no loss scaling is needed.
    """

    def __init__(self, *args, dtype: str = 'bfloat16', **kwargs):
        super().__init__(*args, **kwargs)
        self.cast_dtype = getattr(torch, dtype)

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
