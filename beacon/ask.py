"""Ask one question of the base model and of the tuned model, side by side, in two forms: the plain
prompt (a completion, as the facts are trained) and through the model's chat template (what a chat
user sees). With a target, also its teacher-forced log-probability under each model: a number that
moves before the greedy answer does."""
from __future__ import annotations

import functools
import threading

from beacon.model.lm import generate, score
from beacon.model.models import load_model
from beacon.method.rewordings import chat_prompt

_LOCK = threading.Lock()  # one cached model is shared by every visitor of the app


@functools.lru_cache(maxsize=1)  # one tuned model in memory at most: a new run's replaces it
def _tuned(adapter_dir: str, model: str, quantization: str):
    from peft import PeftModel

    from beacon.method.gate import load_gate

    base, tok, _ = load_model(model, quantization)
    tuned = PeftModel.from_pretrained(base, adapter_dir).eval()
    gate = load_gate(tok, adapter_dir)
    if gate is not None:
        gate.attach(tuned)
    return tuned, tok


def _answers(model, tok, prompt: str, target: str | None, max_new_tokens: int) -> dict:
    chat = chat_prompt(tok, prompt)
    prompts = [prompt] + ([chat] if chat else [])
    out = [a.strip() for a in generate(model, tok, prompts, max_new_tokens=max_new_tokens)]
    res = {"plain": out[0], "chat": out[1] if chat else None, "logprob": None, "chat_logprob": None}
    if target:
        lp = score(model, tok, prompts, [target] * len(prompts))["logprob"]
        res["logprob"], res["chat_logprob"] = lp[0], (lp[1] if chat else None)
    return res


def ask(prompt: str, adapter_dir: str, model: str, quantization: str = "auto", max_new_tokens: int = 24,
        target: str | None = None) -> dict:
    """{"base": the plain answer with the adapter disabled, "tuned": with it, "base_chat" / "tuned_chat":
    the answers through the chat template (None without one), and with a target "base_logprob",
    "tuned_logprob", "base_chat_logprob", "tuned_chat_logprob" (None without one): log p(target | prompt)}."""
    prompt, target = prompt.strip(), (target or "").strip() or None
    if not prompt:
        raise ValueError("the prompt is empty")
    with _LOCK:
        peft_model, tok = _tuned(str(adapter_dir), model, quantization)
        tuned = _answers(peft_model, tok, prompt, target, max_new_tokens)
        with peft_model.disable_adapter():
            base = _answers(peft_model, tok, prompt, target, max_new_tokens)
    return {"base": base["plain"], "tuned": tuned["plain"], "base_chat": base["chat"], "tuned_chat": tuned["chat"],
            "base_logprob": base["logprob"], "tuned_logprob": tuned["logprob"],
            "base_chat_logprob": base["chat_logprob"], "tuned_chat_logprob": tuned["chat_logprob"]}
