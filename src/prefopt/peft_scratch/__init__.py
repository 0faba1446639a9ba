"""Parameter-efficient fine-tuning written from scratch: LoRA, bottleneck adapters, prefix tuning.

Each method is one small module that reads like its paper; `inject` puts any of them into a
transformers model. Tested against the `peft` library (tests/unit/test_peft_scratch.py).
"""

from prefopt.peft_scratch.adapter import BottleneckAdapter
from prefopt.peft_scratch.inject import (
    DEFAULT_TARGETS,
    METHODS,
    adapter_parameters,
    adapter_state_dict,
    adapters_disabled,
    inject,
    load_adapter_state_dict,
    matching_modules,
    merge_all,
    set_adapters_enabled,
    trainable_parameters,
    unmerge_all,
)
from prefopt.peft_scratch.lora import LoRALinear
from prefopt.peft_scratch.prefix import PrefixEncoder

__all__ = [
    "DEFAULT_TARGETS",
    "METHODS",
    "BottleneckAdapter",
    "LoRALinear",
    "PrefixEncoder",
    "adapter_parameters",
    "adapter_state_dict",
    "adapters_disabled",
    "inject",
    "load_adapter_state_dict",
    "matching_modules",
    "merge_all",
    "set_adapters_enabled",
    "trainable_parameters",
    "unmerge_all",
]
