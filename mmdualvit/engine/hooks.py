"""Runner hooks shipped with mmdualvit's configs."""
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

from ..registry import HOOKS
from ..safe_globals import PortableHistoryBuffer


@HOOKS.register_module()
class WeightsOnlyCheckpointHook(Hook):
    """Write checkpoints that load under ``torch.load(weights_only=True)``.

    mmengine pickles the message hub's history buffers together with references to their statistics functions,
    which safe loading refuses. Right before a checkpoint is saved this hook swaps each buffer for a
    :class:`~mmdualvit.safe_globals.PortableHistoryBuffer` holding the same data and no function references.
    """
    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        scalars = checkpoint.get('message_hub', {}).get('log_scalars', {})
        for key, buffer in scalars.items():
            if isinstance(buffer, HistoryBuffer) and not isinstance(buffer, PortableHistoryBuffer):
                scalars[key] = PortableHistoryBuffer.from_buffer(buffer)
