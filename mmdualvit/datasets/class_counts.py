"""The check that a model's heads predict as many classes as its dataset names (run by
:class:`mmdualvit.engine.StrictRunner` when it builds a loop)."""
import re

from mmengine.model import is_model_wrapper

_SHOWN_CLASSES = 8  # class names quoted in an error message
# A module name 'roi_head.bbox_head.0' is config key 'roi_head.bbox_head[0]'.
_LIST_INDEX, _INDEXED = re.compile(r'[.](\d+)(?=[.]|$)'), r'[\1]'


class ClassCountError(ValueError):
    """A head predicts another number of classes than its dataset names."""


def check_class_counts(model, dataset, where: str) -> None:
    """Refuse a model whose heads' ``num_classes`` differ from the number of classes ``dataset`` names.

    mmdet and mmseg train and evaluate such a model without a word (the labels fit into the larger head, the extra
    outputs are never trained), which is the classic mistake when a config is adapted to one's own dataset. This runs
    when a loop is built, before any weights are read. mmdet's ``NumClassCheckHook`` checks detectors only, asserts
    after the weights are loaded and names no config key; mmseg has no such check. Class-agnostic proposal heads
    (mmdet's ``RPNHead`` and its subclasses, ``num_classes=1``) are exempt.

    Raises:
        ClassCountError: naming every head that differs, its setting and the count to set.
    """
    classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
    if not classes:
        return
    try:
        from mmdet.models.dense_heads import RPNHead
        exempt = (RPNHead, )
    except ImportError:  # mmseg or mmpretrain alone
        exempt = ()
    model = model.module if is_model_wrapper(model) else model
    wrong = [(name, module) for name, module in model.named_modules()
             if isinstance(getattr(module, 'num_classes', None), int) and not isinstance(module, exempt)
             and module.num_classes != len(classes)]
    if wrong:
        heads = ', '.join(f'model.{_LIST_INDEX.sub(_INDEXED, name)}.num_classes={module.num_classes} '
                          f'({type(module).__name__})' for name, module in wrong)
        shown = ', '.join(map(str, classes[:_SHOWN_CLASSES])) + (' ...' if len(classes) > _SHOWN_CLASSES else '')
        raise ClassCountError(
            f'{where}.dataset names {len(classes)} classes ({shown}) but {heads}: the head would predict classes the '
            f'data does not have. Set num_classes={len(classes)} in each of these heads of your config (or '
            f'metainfo=dict(classes=...) of the dataset, if it lists the wrong classes); docs/custom_dataset.md.')
