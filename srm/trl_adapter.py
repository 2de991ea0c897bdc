"""The SRM as a reward function for TRL's online trainers (``GRPOTrainer(reward_funcs=[...])``).

    import srm
    from trl import GRPOConfig, GRPOTrainer

    trainer = GRPOTrainer(model=policy, reward_funcs=[srm.reward_function()],   # default SRM
                          args=GRPOConfig(...), train_dataset=prompts)

TRL calls a reward function as ``f(prompts=[...], completions=[...], completion_ids=..., **columns)`` and expects
one float per completion. Both of TRL's dataset formats are handled:

* plain: ``prompts`` and ``completions`` are strings;
* conversational: ``prompts`` are message lists (``[{"role": "user", "content": "..."}]``) and each completion is
  a list holding the assistant message(s). The prompt is rendered as in SRM training data
  (:func:`srm.data.render_prompt`: a lone user message is its text, longer conversations ``role: content``
  lines) and the completion is its assistant text.

When TRL passes ``log_metric`` (GRPOTrainer does), the batch mean of every SRM dimension score is logged as
``srm/<dimension>``, so a run shows which dimensions the policy is moving, not only the total reward.
"""

from __future__ import annotations

from typing import Any

from .data import render_prompt
from .scoring import SRMScorer, load_scorer


def _content_text(content: Any) -> str:
    """A message's content: a string, or a list of parts of which the text parts are kept."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")
    return "" if content is None else str(content)


def _messages(value: Any, what: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
        raise TypeError(f"{what} must be a string or a list of messages {{role, content}}, got {type(value).__name__}")
    return [{"role": m["role"], "content": _content_text(m.get("content"))} for m in value]


def prompt_text(prompt: Any) -> str:
    """TRL prompt (string or message list) -> the prompt text the SRM reads."""
    if isinstance(prompt, str):
        return prompt
    return render_prompt(_messages(prompt, "prompt"))


def completion_text(completion: Any) -> str:
    """TRL completion (string or list of assistant messages) -> the response text the SRM scores."""
    if isinstance(completion, str):
        return completion
    messages = _messages(completion, "completion")
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    return "\n".join(answers if answers else [m["content"] for m in messages])


class SRMRewardFunction:
    """Callable reward for TRL: ``(prompts, completions, **kwargs) -> list[float]``. See the module doc."""

    def __init__(self, scorer: SRMScorer, name: str = "srm", log_dimensions: bool = True):
        self.scorer = scorer
        self.__name__ = name  # TRL names the reward's log columns after it ("rewards/srm/mean")
        self.log_dimensions = log_dimensions

    def __call__(self, prompts: list, completions: list, log_metric=None, **kwargs) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        pairs = [(prompt_text(p), completion_text(c)) for p, c in zip(prompts, completions)]
        results = self.scorer.score(pairs)
        if log_metric is not None and self.log_dimensions and results and results[0].dimensions:
            for dimension in results[0].dimensions:
                log_metric(f"{self.__name__}/{dimension}",
                           sum(r.dimensions[dimension] for r in results) / len(results))
        return [float(r.reward) for r in results]


def reward_function(model=None, tokenizer=None, *, batch_size: int = 16, device: str | None = None,
                    name: str = "srm", log_dimensions: bool = True) -> SRMRewardFunction:
    """A reward function for ``trl.GRPOTrainer(reward_funcs=[...])`` (or any trainer with the same protocol).

    ``model``: ``None`` for the SRM shipped with the package, a directory written by ``srm train``, a loaded
    :class:`~srm.modeling_srm.SRMModel` (plus ``tokenizer``) or an :class:`~srm.scoring.SRMScorer`.
    ``device`` defaults to CUDA when available (the policy and the reward model may sit on different devices;
    rewards come back as Python floats).
    """
    return SRMRewardFunction(load_scorer(model, tokenizer, batch_size=batch_size, device=device), name=name,
                             log_dimensions=log_dimensions)
