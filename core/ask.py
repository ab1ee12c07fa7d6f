"""Ask one question of the base model and of the tuned model, side by side."""
from __future__ import annotations

import functools
import threading

from .evaluate import generate
from .models import load_model

_LOCK = threading.Lock()  # one cached model is shared by every visitor of the app


@functools.lru_cache(maxsize=1)  # one tuned model in memory at most: a new run's replaces it
def _tuned(adapter_dir: str, model: str, quantization: str):
    from peft import PeftModel

    base, tok, _ = load_model(model, quantization)
    return PeftModel.from_pretrained(base, adapter_dir).eval(), tok


def ask(prompt: str, adapter_dir: str, model: str, quantization: str = "auto", max_new_tokens: int = 24) -> dict:
    """{"base": answer with the adapter disabled, "tuned": answer with it}."""
    prompt = prompt.strip()
    if not prompt:
        raise ValueError("the prompt is empty")
    with _LOCK:
        peft_model, tok = _tuned(str(adapter_dir), model, quantization)
        tuned = generate(peft_model, tok, [prompt], max_new_tokens=max_new_tokens)[0]
        with peft_model.disable_adapter():
            base = generate(peft_model, tok, [prompt], max_new_tokens=max_new_tokens)[0]
    return {"base": base.strip(), "tuned": tuned.strip()}
