"""S2FT — structured sparse fine-tuning (S2FT paper) as a PEFT method: config, selection, co-permutation,
partial back-propagation layer, tuner; plus the trainer-facing :class:`S2FTMethod`."""

from __future__ import annotations

from .config import S2FTConfig
from .layer import S2FTFunction, S2FTLayer, SliceSpec
from .method import S2FTMethod, S2FTMethodConfig
from .model import S2FTModel
from .registration import register
from .selection import describe, pick_units, trainable_count

# The one place S2FT is registered with PEFT (config and tuner are both defined by now).
PEFT_TYPE = register(S2FTConfig, S2FTModel)

__all__ = [
    "S2FTConfig", "S2FTFunction", "S2FTLayer", "S2FTMethod", "S2FTMethodConfig", "S2FTModel", "SliceSpec",
    "PEFT_TYPE", "describe", "pick_units", "trainable_count",
]
