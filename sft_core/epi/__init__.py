"""Evolving Parameter Isolation (EPI) and its baselines (``static``, ``full``) and control (``random``).

Plain PyTorch::

    from sft_core.epi import EPIConfig, attach_epi
    isolator = attach_epi(model, optimizer, EPIConfig(method="epi", isolation_ratio=0.1))
    loss.backward(); isolator.step(task); optimizer.zero_grad()

transformers: ``sft_core.trainer.MultiTaskTrainer(..., epi_config=EPIConfig(...))`` or
``EPICallback(EPIConfig(...), task=...)`` on any Trainer (TRL's SFTTrainer included).
"""

from .config import EPIConfig
from .drift import DRIFT_LOG_NAME, DriftLog, plot_drift, read_drift_log
from .isolator import ParameterIsolator, TaskIsolationState, attach_epi
from .state_io import has_saved_state



def __getattr__(name: str):
    # EPICallback needs transformers; plain-PyTorch users of attach_epi should not pay for importing it
    if name == "EPICallback":
        from .callback import EPICallback

        return EPICallback
    raise AttributeError(f"module 'sft_core.epi' has no attribute {name!r}")


__all__ = [
    "EPIConfig", "attach_epi", "ParameterIsolator", "TaskIsolationState", "EPICallback",
    "DriftLog", "plot_drift", "read_drift_log", "DRIFT_LOG_NAME", "has_saved_state",
]
