"""Mixed precision on a CPU with bf16 instructions: the frozen linear layers compute in bf16.

On such a CPU (AVX512-BF16 or AMX) a bf16 matmul runs about three times the fp32 rate (measured on
this project's 2-core EPYC: 360 against 122 GFLOP/s), and the frozen linear layers' matmuls are
most of a training step. Inside `frozen_bf16(model)` each frozen `nn.Linear` of the decoder holds a
bf16 copy of its weight, and its input is cast to bf16 and its output back to fp32. Everything
else stays as it was: LoRA's own weights and gradients, norms, attention (its bf16 backward on a
CPU is about five times slower than fp32), the LM head, softmax and losses. Not torch.autocast:
it casts every frozen weight again at every call and runs attention in bf16.

Recall is measured outside this context, in the model's own precision, so before and after are
compared as the person will run the model. What ran is in the report (`compute`).

Off by default (`--compute auto` takes it where the CPU has bf16 instructions, `bf16` anywhere). Behind
the subject gate it kept the bar on four samples, but on the 30-fact benchmark its faster steps
were spent on more of them (55 against 39): no whole-run gain measured (docs/speed.md).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

import torch


def resolve(choice: str, model) -> str:
    """What runs: "bf16" where asked for on a CPU with an fp32 model, or with "auto" where that CPU has bf16
    instructions; a GPU and a 4-bit model keep their own compute dtype (bitsandbytes sets it), reported as
    "fp32" (the model's own precision)."""
    p = next(model.parameters())
    if p.device.type != "cpu" or not _linears(model):
        return "fp32"
    return ("bf16" if cpu_has_bf16() else "fp32") if choice == "auto" else choice


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX, from /proc/cpuinfo): without, oneDNN
    emulates bf16, with nothing to gain. Not Linux: False."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def _linears(model) -> list[torch.nn.Linear]:
    """The decoder's frozen fp32 nn.Linear layers (peft's base layers included; not the LM head, whose
    weight is tied to the embeddings)."""
    head = model.get_output_embeddings()
    return [m for m in model.modules() if type(m) is torch.nn.Linear and m is not head
            and m.weight.dtype == torch.float32 and not m.weight.requires_grad]


def _to_bf16(module, args):
    return (args[0].to(torch.bfloat16), *args[1:])


def _to_fp32(module, args, out):
    return out.float()


class FrozenBf16:
    """bf16 copies of the frozen linear layers' weights, made once; `with copies.active():` swaps them in
    (no conversion, so a training loop can leave it for an fp32 check and come back at no cost)."""

    def __init__(self, model, enabled: bool = True):
        self.copies = [(m, m.weight.data.to(torch.bfloat16), m.bias.data.to(torch.bfloat16) if m.bias is not None
                        else None) for m in _linears(model)] if enabled else []

    @contextmanager
    def active(self):
        saved, hooks = [], []
        try:
            for m, w, b in self.copies:
                saved.append((m, m.weight.data, m.bias.data if b is not None else None))
                m.weight.data = w
                if b is not None:
                    m.bias.data = b
                hooks += [m.register_forward_pre_hook(_to_bf16), m.register_forward_hook(_to_fp32)]
            yield
        finally:
            for h in hooks:
                h.remove()
            for m, w, b in saved:
                m.weight.data = w
                if b is not None:
                    m.bias.data = b


@contextmanager
def frozen_bf16(model, enabled: bool = True):
    """Within: the frozen linear layers compute in bf16 (see the module's docstring); the fp32 weights
    are back on exit, whatever happens inside."""
    with FrozenBf16(model, enabled).active():
        yield
