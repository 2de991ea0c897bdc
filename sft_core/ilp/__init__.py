"""Incomplete-learning (ILP) diagnostics: which training samples a fine-tuned model fails to reproduce,
why (five causes), and a targeted training plan to fix them.

- :mod:`.signals`     pure functions over numpy arrays (cartography, forgetting, JS, duplicates, density...)
- :mod:`.checkers`    answer checkers: normalised exact match, final number, label
- :mod:`.dynamics`    :class:`TrainingDynamicsRecorder`, a TrainerCallback recording per-sample dynamics
- :mod:`.probes`      model-side measurements: target scoring, generation, embeddings
- :mod:`.attribution` signal -> cause rules (:class:`AttributionConfig` thresholds)
- :mod:`.diagnose`    the whole diagnosis; :mod:`.report` its files; :mod:`.mitigation` the new plan
"""

from .attribution import Attribution, attribute, cause_scores, signal_table_from_arrays
from .checkers import CHECKERS, exact_match, final_number_match, get_checker, label_match
from .config import CAUSES, AttributionConfig, DetectionConfig
from .diagnose import compare_reports, diagnose
from .dynamics import Dynamics, TrainingDynamicsRecorder, load_dynamics
from .mitigation import MitigationConfig, build_plan

__all__ = ["Attribution", "AttributionConfig", "CAUSES", "CHECKERS", "DetectionConfig", "Dynamics",
           "MitigationConfig", "TrainingDynamicsRecorder", "attribute", "build_plan", "cause_scores",
           "compare_reports", "diagnose", "exact_match", "final_number_match", "get_checker", "label_match",
           "load_dynamics", "signal_table_from_arrays"]
