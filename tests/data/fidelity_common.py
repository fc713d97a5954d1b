"""What dev/official_outputs.py (the official mmdet 2.x / mmseg 0.x models) and tests/test_fidelity.py (ours) do
alike, so that both sides do exactly the same: the input's pixels and one deterministic training step. Only torch
is needed."""
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


def input_pixels(inputs, mean, std, img_shape):
    """The normalised input (1, 3, H, W) mapped back to the uint8 image it was made from, (3, h, w) for
    ``img_shape`` = (h, w, ...) (the padding beyond it excluded), and the largest distance of a value from an
    integer pixel before rounding (0 up to float rounding when the input is an integer image normalised)."""
    height, width = img_shape[:2]
    x = inputs[0, :, :height, :width].double() * torch.tensor(std, dtype=torch.float64)[:, None, None]
    x += torch.tensor(mean, dtype=torch.float64)[:, None, None]
    pixels = x.round()
    return pixels.clamp(0, 255).to(torch.uint8).numpy(), float((x - pixels).abs().max())
