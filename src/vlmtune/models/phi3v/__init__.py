"""Phi-3-Vision (and Phi-3.5-Vision) implemented on transformers' Phi3 decoder and CLIP tower.

Follows Microsoft's official remote code (``configuration_phi3_v.py``, ``image_processing_phi3_v.py``,
``processing_phi3_v.py``, ``modeling_phi3_v.py``, ``image_embedding_phi3_v.py``) and is checked
against golden vectors computed with it. One role per file:

- ``configuration_phi3v``: ``Phi3VConfig`` (reads/writes the official ``config.json``);
- ``image_processing_phi3v``: ``Phi3VImageProcessor`` (the HD transform, no torchvision);
- ``processing_phi3v``: ``Phi3VProcessor`` (tokenizer + images -> batched model inputs);
- ``modeling_phi3v``: ``Phi3VModel`` (decoder + image embedding, merging the images) and
  ``Phi3VForCausalLM`` (+ ``lm_head``, generation, checkpoint I/O);
- ``image_embedding_phi3v``: the HD image embedding (CLIP features, 2x2 merge, separators, MLP);
- ``convert_phi3v_weights``: the official key table, strict load/save;
- ``hub_files``: a folder shaped like the hub's (generation config, remote code, ``vllm serve``);
- ``tokenizer_files``: tokenizer files in the classic form transformers 4.4x and 5 both read;
- ``testing``: tiny random models.
"""

from vlmtune.models.phi3v.configuration_phi3v import Phi3VConfig
from vlmtune.models.phi3v.convert_phi3v_weights import (
    load_official_state_dict,
    native_to_official,
    official_key_table,
    official_to_native,
)
from vlmtune.models.phi3v.hub_files import (
    missing_remote_code,
    save_model_folder,
    vllm_serve_command,
)
from vlmtune.models.phi3v.image_processing_phi3v import Phi3VImageProcessor
from vlmtune.models.phi3v.modeling_phi3v import (
    LORA_TARGET_MODULES,
    Phi3VForCausalLM,
    Phi3VModel,
    lora_target_modules,
)
from vlmtune.models.phi3v.processing_phi3v import Phi3VProcessor
from vlmtune.models.phi3v.testing import build_tiny_phi3v, tiny_phi3v_config

__all__ = [
    "LORA_TARGET_MODULES",
    "Phi3VConfig",
    "Phi3VForCausalLM",
    "Phi3VImageProcessor",
    "Phi3VModel",
    "Phi3VProcessor",
    "build_tiny_phi3v",
    "load_official_state_dict",
    "lora_target_modules",
    "missing_remote_code",
    "native_to_official",
    "official_key_table",
    "official_to_native",
    "save_model_folder",
    "tiny_phi3v_config",
    "vllm_serve_command",
]
