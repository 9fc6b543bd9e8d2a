"""Adapter from our kernel signature to flash-attn's varlen kernels (FA2 `flash_attn`, FA3 `flash_attn_interface`).

Inside:
- `FlashAttnAdapter(version)`: a callable with the common kernel signature of `attention_kernels`
  (`q, k, v, cu_seqlens, max_seqlen, window, dropout_p`); it owns the calling convention:
  fp32 inputs cast to bf16 (flash-attn only runs fp16/bf16) and the output cast back, int32 `cu_seqlens`,
  `window` (one-sided half window, None = global) mapped to flash-attn's `window_size=(w, w)` / `(-1, -1)`,
  softmax scale left to flash-attn's default 1/sqrt(D). q, k, v are passed as they come: flash-attn needs only
  the last dimension contiguous, which the views of a fused projection already are (flash-attn itself copies a
  tensor that is not).
- `flash_attn_available(version)`: whether the package imports (cached, imported lazily: CPU machines have none).
  A package that is installed but fails to import (built for another torch or CUDA) is reported once, as a
  warning naming the exception -- silently falling back would make every step several times slower.
- `varlen_func=`: the flash-attn function to call, injectable so that the tests check the adapter's conventions on
  CPU against a naive stand-in with flash-attn's signature and semantics.

Every argument after q, k, v is passed BY KEYWORD, and only the keywords the installed function accepts: the
published signatures differ in order and content. FA2 (flash-attn 2.x `flash_attn_varlen_func`): `q, k, v,
cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal, window_size, ...,
deterministic`. FA3 (`flash_attn_interface` from flash-attn's hopper/ folder), by the flash-attn tag it was built
from: v2.6.x `(..., max_seqlen_q, max_seqlen_k, softmax_scale, causal)` -- no window, no deterministic flag;
v2.7.0-v2.7.2 adds `window_size, deterministic, seqused_q=None, seqused_k=None`; v2.7.3-v2.7.4.post1 puts
`seqused_q, seqused_k` (required) BEFORE `max_seqlen_q`; v2.8 moves them after it with defaults None. FA3 has
no dropout, and some releases return `(out, softmax_lse)` instead of `out`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import warnings
from typing import Callable, Optional

import torch

# version -> (module, attribute) of the varlen function; imported only when first used.
_VARLEN_SOURCES = {2: ("flash_attn", "flash_attn_varlen_func"), 3: ("flash_attn_interface", "flash_attn_varlen_func")}
_HALF_DTYPES = (torch.float16, torch.bfloat16)


# Why an installed flash-attn version did not import (version -> "ExceptionType: message").
_IMPORT_FAILURES: dict[int, str] = {}


@functools.lru_cache(maxsize=None)
def _import_varlen_func(version: int) -> Optional[Callable]:
    module, attr = _VARLEN_SOURCES[version]
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as err:
        if err.name == module:
            return None  # not installed: the normal case on CPU machines
        failure: Exception = err
    except Exception as err:  # installed, but built for another CUDA / torch (undefined symbol, ...)
        failure = err
    _IMPORT_FAILURES[version] = f"{type(failure).__name__}: {failure}"
    warnings.warn(
        f"flash-attn {version} (`{module}`) is installed but does not import ({_IMPORT_FAILURES[version]}); "
        f"attention falls back to the PyTorch kernels, several times slower on GPU. Reinstall flash-attn built for "
        f"this torch {torch.__version__} / CUDA {torch.version.cuda}.", RuntimeWarning, stacklevel=2)
    return None


def flash_attn_available(version: int) -> bool:
    """True when flash-attn `version` (2 or 3) imports on this machine."""
    if version not in _VARLEN_SOURCES:
        raise ValueError(f"flash-attn version must be one of {sorted(_VARLEN_SOURCES)}, got {version!r}")
    return _import_varlen_func(version) is not None


def unavailable_reason(version: int) -> str:
    """Why `flash_attn_available(version)` is False, for error messages."""
    pkg = _VARLEN_SOURCES[version][0]
    failure = _IMPORT_FAILURES.get(version)
    return f"`{pkg}` is installed but does not import ({failure})" if failure else f"`{pkg}` is not installed"


# FA2's keywords: assumed when a function's signature cannot be read or it takes **kwargs.
_KNOWN_KEYWORDS = frozenset({"cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "dropout_p",
                             "softmax_scale", "causal", "window_size", "deterministic"})


def accepted_keywords(func: Callable) -> frozenset:
    """The parameter names `func` accepts by keyword."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return _KNOWN_KEYWORDS
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):  # a wrapper taking **kwargs
        return _KNOWN_KEYWORDS
    return frozenset(p.name for p in params
                     if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


@dataclasses.dataclass
class FlashAttnAdapter:
    """Common-signature attention kernel backed by flash-attn `version`'s varlen function.

    `varlen_func` is looked up lazily (injectable for tests); `compute_dtype` is what fp32 inputs are cast to;
    `deterministic` is FA2's deterministic backward (config `deterministic_fa2`). `keywords`: the names
    `varlen_func` accepts; `resolved()` fills both in once, so that a compiled forward does not import or inspect.
    """

    version: int
    varlen_func: Optional[Callable] = None
    compute_dtype: torch.dtype = torch.bfloat16
    deterministic: bool = False
    keywords: Optional[frozenset] = None
    uses_packed_index = False  # cu_seqlens is all it needs: the model skips building the PackedIndex (a host sync)

    def __post_init__(self) -> None:
        if self.version not in _VARLEN_SOURCES:
            raise ValueError(f"flash-attn version must be one of {sorted(_VARLEN_SOURCES)}, got {self.version!r}")
        if self.compute_dtype not in _HALF_DTYPES:
            raise ValueError(f"flash-attn computes in fp16/bf16; compute_dtype={self.compute_dtype} is not one of them")

    def _func(self) -> Callable:
        func = self.varlen_func or _import_varlen_func(self.version)
        if func is None:
            raise RuntimeError(
                f"attention kernel 'flash_attn{self.version}' is unavailable: {unavailable_reason(self.version)}; "
                f"install flash-attn (CUDA only) or set `model_config.attn_kernel` to 'auto' or 'sdpa'"
            )
        return func

    def resolved(self) -> "FlashAttnAdapter":
        """This adapter with its varlen function imported and its keywords read; raises when it is unavailable."""
        func = self._func()
        return dataclasses.replace(self, varlen_func=func, keywords=accepted_keywords(func))

    def __call__(
        self,
        q: torch.Tensor,  # (T, H, D)
        k: torch.Tensor,  # (T, H, D)
        v: torch.Tensor,  # (T, H, D)
        cu_seqlens: torch.Tensor,  # (B+1,)
        max_seqlen: int,
        window: Optional[int],
        dropout_p: float = 0.0,
        *,
        index=None,  # PackedIndex of the other kernels; flash-attn needs only cu_seqlens
    ) -> torch.Tensor:  # (T, H, D)
        if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
            raise ValueError(f"flash_attn{self.version} expects q, k, v of one shape (T, H, D); got "
                             f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        if self.version == 3 and dropout_p > 0.0:
            raise ValueError(
                f"flash_attn3 has no attention dropout (got dropout_p={dropout_p}); set "
                f"`model_config.attention_probs_dropout_prob: 0.0` or `attn_kernel: flash_attn2`"
            )
        func = self._func()
        accepted = self.keywords if self.keywords is not None else accepted_keywords(func)
        in_dtype = q.dtype
        dtype = in_dtype if in_dtype in _HALF_DTYPES else self.compute_dtype
        q, k, v = (x.to(dtype) for x in (q, k, v))  # no copy when already half: views with stride-1 last dims
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)  # flash-attn rejects int64 boundaries
        max_seqlen = int(max_seqlen)
        kwargs = {"cu_seqlens_q": cu, "cu_seqlens_k": cu, "max_seqlen_q": max_seqlen, "max_seqlen_k": max_seqlen}
        wanted = {  # name -> (value, whether leaving it out would change the result)
            "dropout_p": (float(dropout_p), dropout_p > 0.0),
            "softmax_scale": (None, False),
            "causal": (False, False),
            "window_size": ((-1, -1) if window is None else (int(window), int(window)), window is not None),
            "deterministic": (self.deterministic, self.deterministic),
            "seqused_q": (None, False),  # required (no default) in FA3 v2.7.3-v2.7.4.post1
            "seqused_k": (None, False),
        }
        for name, (value, needed) in wanted.items():
            if name in accepted:
                kwargs[name] = value
            elif needed:
                raise ValueError(
                    f"the installed flash_attn{self.version} ({getattr(func, '__module__', '?')}) has no `{name}` "
                    f"argument, which this layer needs ({name}={value}); install a newer flash-attn or set "
                    f"`model_config.attn_kernel: flash_attn2` / 'sdpa'")
        out = func(q, k, v, **kwargs)
        if isinstance(out, tuple):  # FA3 releases that return (out, softmax_lse)
            out = out[0]
        return out.to(in_dtype)
