"""The allow-list for ``torch.load(weights_only=True)``: as narrow as the data we actually read.

Every allowed global is attack surface: a pickle may call or rebuild it with arguments of its choosing. numpy's
``dtype``, its dtype classes and ``ndarray`` reconstruction, for example, let a file build a structured dtype with an
object field over forged bytes, which crashes (or worse) when freed. So nothing from numpy is allowed, and neither is
any mmengine or mmdualvit class:

- checkpoints written with our configs hold only tensors, containers and Python scalars
  (:class:`mmdualvit.engine.PortableCheckpointHook` stores the message hub's history as plain lists), so they load
  with plain ``torch.load(f, weights_only=True)`` anywhere, with or without mmdualvit;
- the single entry is ``argparse.Namespace``, which the official Dual-ViT checkpoints (timm trainer) pickle; it is a
  plain attribute bag whose unpickling runs no code.

``torch.serialization.add_safe_globals`` exists from torch 2.4; on older torch nothing is registered (official
Dual-ViT files then need a one-off conversion with ``--trust-checkpoint``), while everything else works unchanged.
"""
import argparse

import torch

SAFE_GLOBALS = [argparse.Namespace]

if hasattr(torch.serialization, 'add_safe_globals'):
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
