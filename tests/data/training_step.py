"""One deterministic training step, shared by dev/official_outputs.py (the official mmdet 2.x / mmseg 0.x models)
and tests/test_fidelity.py (ours), so that both sides do exactly the same. Only torch is needed."""
import torch


def no_randomness(model):
    """Drop-path and dropout probabilities set to 0 on a built model (the official detection backbone hard-codes
    drop_path_rate=0.15, so no config setting reaches it); everything else trains as configured."""
    for module in model.modules():
        if hasattr(module, 'drop_prob'):
            module.drop_prob = 0.
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.
    return model


def backward_record(model, losses: dict) -> dict:
    """Backward of the total loss (every entry whose name has 'loss', lists summed, as both codebases' parsers do);
    returns {'losses': {name: summed value}, 'grad_norms': {part: L2 norm}}, parts being the first component of the
    backbone's parameter names (the official key names: q, patch_embed1, block1 ...)."""
    def value(v):
        return sum(v) if isinstance(v, (list, tuple)) else v

    model.zero_grad()
    sum(value(v) for k, v in losses.items() if 'loss' in k).backward()
    squares = {}
    for name, param in model.backbone.named_parameters():
        if param.grad is not None:
            part = name.split('.')[0]
            squares[part] = squares.get(part, 0.) + float(param.grad.double().pow(2).sum())
    return dict(losses={k: float(value(v)) for k, v in losses.items()},
                grad_norms={k: v ** 0.5 for k, v in squares.items()})
