"""QuantConfig: every option of a quantization run, validated, with presets.

One name per concept, the same in the UI, the CLI and ALGORITHM.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

METHODS = ("septq", "gptq", "rtn")
MASK_SCOPES = ("matrix", "layer", "model")


class ConfigError(ValueError):
    """An option of QuantConfig is out of its allowed range."""


@dataclass(frozen=True)
class QuantConfig:
    method: str = "septq"
    bits: int = 4
    group_size: int | None = None  # None: one grid per output row
    sym: bool = False
    mse: bool = True
    reserve_ratio: float = 0.01  # fraction of weights kept in full precision (septq only)
    mask_scope: str = "matrix"
    blocksize: int = 128
    percdamp: float = 0.01
    act_order: bool = False
    true_sequential: bool = True
    nsamples: int = 128
    seqlen: int = 2048
    calib: str = "c4"
    seed: int = 0

    def __post_init__(self):
        self.validate()

    # -- validation ---------------------------------------------------------
    def validate(self) -> None:
        def bad(field: str, allowed: str):
            value = getattr(self, field)
            raise ConfigError(f"QuantConfig.{field}={value!r} is invalid: allowed {allowed}.")

        if self.method not in METHODS:
            bad("method", " | ".join(repr(m) for m in METHODS))
        if not _is_int(self.bits) or not 2 <= self.bits <= 8:
            bad("bits", "an integer from 2 to 8")
        if self.group_size is not None and (not _is_int(self.group_size) or self.group_size < 1):
            bad("group_size", "None (one grid per row) or a positive integer such as 32, 64 or 128")
        if not isinstance(self.reserve_ratio, (int, float)) or not 0.0 <= self.reserve_ratio <= 0.5:
            bad("reserve_ratio", "a number from 0 to 0.5")
        if self.mask_scope not in MASK_SCOPES:
            bad("mask_scope", " | ".join(repr(s) for s in MASK_SCOPES))
        if not _is_int(self.blocksize) or self.blocksize < 1:
            bad("blocksize", "a positive integer (128 is usual)")
        if not isinstance(self.percdamp, (int, float)) or not 0.0 < self.percdamp <= 1.0:
            bad("percdamp", "a number in (0, 1] (0.01 is usual)")
        if not _is_int(self.nsamples) or self.nsamples < 1:
            bad("nsamples", "a positive integer")
        if not _is_int(self.seqlen) or self.seqlen < 2:
            bad("seqlen", "an integer of at least 2")
        if not _is_int(self.seed):
            bad("seed", "an integer")
        for flag in ("sym", "mse", "act_order", "true_sequential"):
            if not isinstance(getattr(self, flag), bool):
                bad(flag, "True or False")
        if not isinstance(self.calib, str) or not self.calib:
            bad("calib", "a corpus name (c4, wikitext2, ptb, demo) or a file path")

    # -- derived ------------------------------------------------------------
    @property
    def effective_reserve_ratio(self) -> float:
        """Only SEPTQ reserves weights; GPTQ and RTN quantize all of them."""
        return float(self.reserve_ratio) if self.method == "septq" else 0.0

    @property
    def label(self) -> str:
        text = f"{self.method.upper()} {self.bits}-bit"
        if self.group_size:
            text += f" g{self.group_size}"
        if self.method == "septq":
            text += f" r={self.reserve_ratio:g}"
            if self.mask_scope != "matrix":
                text += f" ({self.mask_scope})"
        return text

    def replace(self, **changes: Any) -> QuantConfig:
        return dataclasses.replace(self, **changes)

    # -- presets ------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> QuantConfig:
        if name not in PRESETS:
            raise ConfigError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"Unknown QuantConfig field(s): {', '.join(sorted(unknown))}.")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        return cls.from_dict(json.loads(text))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


PRESETS: dict[str, dict[str, Any]] = {
    # ALGORITHM.md "Paper settings": 128 x 2048 C4 windows, per-row asymmetric
    # mse grid, blocksize 128, percdamp 0.01, no act-order, 1 % reserved.
    "paper": dict(
        method="septq", bits=3, group_size=None, sym=False, mse=True, reserve_ratio=0.01,
        mask_scope="matrix", blocksize=128, percdamp=0.01, act_order=False,
        true_sequential=True, nsamples=128, seqlen=2048, calib="c4", seed=0,
    ),
    # Small enough for an interactive run of the default model on a 2-core CPU:
    # 16 x 512 calibration tokens from the bundled demo text (always available).
    "preview": dict(
        method="septq", bits=3, group_size=None, sym=False, mse=True, reserve_ratio=0.01,
        mask_scope="matrix", blocksize=128, percdamp=0.01, act_order=False,
        true_sequential=True, nsamples=16, seqlen=512, calib="demo", seed=0,
    ),
}
