"""Structural Reward Model: multi-dimension reward with a prompt-conditioned gate.

``import srm`` registers the model with transformers, so a saved SRM loads in one line::

    from transformers import AutoModel
    model = AutoModel.from_pretrained("runs/srm")   # -> srm.SRMModel
"""

from transformers import AutoConfig, AutoModel

from .configuration_srm import DEFAULT_DIMENSIONS, DimensionSpec, SRMConfig
from .modeling_srm import SRMModel, SRMOutput

AutoConfig.register(SRMConfig.model_type, SRMConfig, exist_ok=True)
AutoModel.register(SRMConfig, SRMModel, exist_ok=True)

__all__ = ["DEFAULT_DIMENSIONS", "DimensionSpec", "SRMConfig", "SRMModel", "SRMOutput"]
