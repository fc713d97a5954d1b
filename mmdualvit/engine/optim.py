"""Mixed precision on machines without a GPU."""
from contextlib import contextmanager

import torch
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper

from ..registry import OPTIM_WRAPPERS


def _to_float(outputs):
    if torch.is_tensor(outputs):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_to_float(o) for o in outputs)
    return outputs


@OPTIM_WRAPPERS.register_module()
class CPUAutocastOptimWrapper(OptimWrapper):
    """:class:`~mmengine.optim.OptimWrapper` running the backbone under ``torch.autocast('cpu', bfloat16)``.

    mmengine's ``AmpOptimWrapper`` requires CUDA/NPU/MLU; ``tools/train.py`` selects this wrapper on CPU-only
    machines for ``--amp`` and for configs that ask for fp16. The backbone (most of the compute) runs in bfloat16
    and hands float32 features on; necks and heads stay in float32 because mmcv's CPU ops (nms, RoIAlign) have no
    bfloat16 kernels. A model without a ``backbone`` attribute runs entirely under autocast. bfloat16 keeps
    float32's exponent range, so no loss scaling is needed.
    """

    def __init__(self, *args, dtype: str = 'bfloat16', **kwargs):
        super().__init__(*args, **kwargs)
        self.cast_dtype = getattr(torch, dtype)

    @contextmanager
    def optim_context(self, model):
        module = model.module if is_model_wrapper(model) else model
        backbone = getattr(module, 'backbone', None)
        with super().optim_context(model):
            if backbone is None:
                with torch.autocast('cpu', dtype=self.cast_dtype):
                    yield
                return
            original = backbone.forward

            def forward(*args, **kwargs):
                with torch.autocast('cpu', dtype=self.cast_dtype):
                    return _to_float(original(*args, **kwargs))

            backbone.forward = forward
            try:
                yield
            finally:
                del backbone.forward  # back to the class's forward
