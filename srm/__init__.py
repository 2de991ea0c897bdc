"""Structural Reward Model: multi-dimension reward with a prompt-conditioned gate.

``import srm`` registers the model with transformers, so a saved SRM loads in one line::

    from transformers import AutoModel
    model = AutoModel.from_pretrained("runs/srm")   # -> srm.SRMModel

and gives TRL a reward function::

    trainer = trl.GRPOTrainer(model=policy, reward_funcs=[srm.reward_function()], ...)
"""

from transformers import AutoConfig, AutoModel

from .configuration_srm import DEFAULT_DIMENSIONS, DimensionSpec, SRMConfig
from .modeling_srm import SRMModel, SRMOutput
from .trl_adapter import SRMRewardFunction, reward_function

AutoConfig.register(SRMConfig.model_type, SRMConfig, exist_ok=True)
AutoModel.register(SRMConfig, SRMModel, exist_ok=True)

__all__ = ["DEFAULT_DIMENSIONS", "DimensionSpec", "SRMConfig", "SRMModel", "SRMOutput", "SRMRewardFunction",
           "reward_function"]
