"""Batch scoring with a trained SRM.

    from srm.scoring import SRMScorer
    scorer = SRMScorer.from_pretrained("runs/srm")
    results = scorer.score([("What is 2+2?", "4"), ("What is 2+2?", "5")])
    results[0].reward, results[0].dimensions, results[0].gates
    scorer.explain_pair(results[0], results[1])   # which dimensions decided the comparison

    scorer = load_scorer()                         # the SRM shipped with the package (srm.defaults)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from .branches import FeatureCache, compute_branch_features, length_sorted_order
from .collate import EncoderEmbeddingBranch, tokenize_joint, tokenize_prompts
from .modeling_srm import SRMModel


@dataclass
class ScoreResult:
    reward: float
    dimensions: dict[str, float] = field(default_factory=dict)
    gates: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class SRMScorer:
    def __init__(self, model: SRMModel, tokenizer, batch_size: int = 16, device: str | None = None,
                 feature_branches: dict | None = None, feature_cache: FeatureCache | None = None,
                 show_progress: bool = False):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.feature_cache = feature_cache
        self.show_progress = show_progress
        self.branches = model.get_feature_branches(overrides=feature_branches, device=self.device) \
            if not model.config.scalar_baseline else {}

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "SRMScorer":
        model = SRMModel.from_pretrained(path)
        return cls(model, AutoTokenizer.from_pretrained(path), **kwargs)

    @property
    def dimension_names(self) -> list[str]:
        return self.model.config.dimension_names

    @torch.inference_mode()
    def score(self, items: list[tuple[str, str]]) -> list[ScoreResult]:
        """Score (prompt, response) pairs in batches; results keep the input order.

        Batches are formed from items of similar length (each batch is padded to its longest item, so mixing a
        short and a long answer wastes most of the short one's compute); the results are put back in order."""
        order = length_sorted_order([str(p) + str(r) for p, r in items])
        prompt_vectors = self._prompt_embeddings([str(p) for p, _ in items])
        results: list[ScoreResult | None] = [None] * len(items)
        starts = range(0, len(items), self.batch_size)
        for start in tqdm(starts, desc="scoring", disable=not self.show_progress or len(starts) < 2):
            rows = order[start:start + self.batch_size]
            for row, result in zip(rows, self._score_batch([items[i] for i in rows], prompt_vectors)):
                results[row] = result
        return results

    def _prompt_embeddings(self, prompts: list[str]) -> dict[str, torch.Tensor] | None:
        """The gate's prompt-alone encoder pass, once per distinct prompt of the call (length-sorted batches),
        however the responses are batched: a prompt scored with many responses (a pair, GRPO's generations) is
        encoded once. None where the batch computes it itself (scalar model, cached frozen encoder)."""
        config = self.model.config
        if config.scalar_baseline or (self.feature_cache is not None and config.freeze_backbone):
            return None
        unique = list(dict.fromkeys(prompts))
        order = length_sorted_order(unique)
        vectors = {}
        for start in range(0, len(unique), self.batch_size):
            batch = [unique[i] for i in order[start:start + self.batch_size]]
            encoded = {k: v.to(self.device) for k, v in tokenize_prompts(self.tokenizer, config, batch).items()}
            pooled = self.model.encode(encoded["prompt_input_ids"], encoded["prompt_attention_mask"])
            vectors.update(zip(batch, pooled))
        return vectors

    def _score_batch(self, batch: list[tuple[str, str]],
                     prompt_vectors: dict[str, torch.Tensor] | None = None) -> list[ScoreResult]:
        config = self.model.config
        prompts = [str(p) for p, _ in batch]
        responses = [str(r) for _, r in batch]
        unique_prompts = list(dict.fromkeys(prompts))
        # A frozen encoder's outputs are as cacheable as any frozen branch's: reuse them when a cache is given.
        use_cached_encoder = self.feature_cache is not None and config.freeze_backbone
        if use_cached_encoder:
            inputs = {"response_embeddings": self.feature_cache.get_or_compute(
                EncoderEmbeddingBranch(self.model, self.tokenizer, "joint", show_progress=False), prompts, responses)}
        else:
            inputs = tokenize_joint(self.tokenizer, config, prompts, responses)
        if not config.scalar_baseline:
            row = {p: i for i, p in enumerate(unique_prompts)}
            if prompt_vectors is not None:
                inputs["prompt_embeddings"] = torch.stack([prompt_vectors[p] for p in unique_prompts])
            elif use_cached_encoder:
                inputs["prompt_embeddings"] = self.feature_cache.get_or_compute(
                    EncoderEmbeddingBranch(self.model, self.tokenizer, "prompt", show_progress=False), unique_prompts,
                    [""] * len(unique_prompts))
            else:
                inputs.update(tokenize_prompts(self.tokenizer, config, unique_prompts))
            inputs["response_prompt_index"] = torch.tensor([row[p] for p in prompts])
            features = compute_branch_features(config, self.branches, prompts, responses, self.feature_cache)
            if features is not None:
                inputs["branch_features"] = features
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        output = self.model(**inputs)
        rewards = output.reward.float().cpu().tolist()
        if output.dimensions is None:
            return [ScoreResult(reward) for reward in rewards]
        names = self.dimension_names
        dimensions = output.dimensions.float().cpu().tolist()
        gates = output.gates.float().cpu().tolist()
        return [ScoreResult(reward, dict(zip(names, d)), dict(zip(names, g)))
                for reward, d, g in zip(rewards, dimensions, gates)]

    def explain_pair(self, first: ScoreResult, second: ScoreResult) -> dict:
        """Split ``reward(first) - reward(second)`` into per-dimension contributions
        ``scale * gate_k * (score_k(first) - score_k(second))`` (exact when both answer the same prompt, since
        they then share the gate). ``decided_by`` lists the dimensions that pushed towards the winner, largest
        first."""
        margin = first.reward - second.reward
        preferred = "first" if margin > 0 else ("second" if margin < 0 else "tie")
        if not first.dimensions:
            return {"preferred": preferred, "margin": margin, "contributions": {}, "decided_by": []}
        scale = float(self.model.reward_scale.detach().cpu().item())
        contributions = {name: scale * 0.5 * (first.gates[name] + second.gates[name])
                         * (first.dimensions[name] - second.dimensions[name]) for name in first.dimensions}
        sign = 1.0 if margin >= 0 else -1.0
        decided_by = sorted((n for n, c in contributions.items() if c * sign > 0),
                            key=lambda n: -abs(contributions[n]))
        return {"preferred": preferred, "margin": margin, "contributions": contributions, "decided_by": decided_by}


def load_scorer(model=None, tokenizer=None, *, batch_size: int = 16, device: str | None = None,
                show_progress: bool = False) -> SRMScorer:
    """An :class:`SRMScorer` from whatever names the model:

    * ``None``: the default SRM shipped with the package (``srm.defaults.load_default_srm()``);
    * a directory written by ``srm train`` (``str`` / ``PathLike``);
    * a loaded :class:`~srm.modeling_srm.SRMModel` (with ``tokenizer``, else its backbone's tokenizer);
    * an :class:`SRMScorer` (returned as it is).
    """
    if isinstance(model, SRMScorer):
        return model
    if model is None:
        try:
            from . import defaults
        except ImportError:
            raise FileNotFoundError("this installation ships no default SRM (srm/defaults.py); "
                                    "give a directory written by `srm train`") from None
        loaded = defaults.load_default_srm()
        if isinstance(loaded, SRMScorer):
            loaded.batch_size, loaded.show_progress = max(1, int(batch_size)), show_progress
            return loaded
        model, tokenizer = loaded if isinstance(loaded, tuple) else (loaded, tokenizer)
    if isinstance(model, (str, os.PathLike)):
        return SRMScorer.from_pretrained(os.fspath(model), batch_size=batch_size, device=device,
                                         show_progress=show_progress)
    if tokenizer is None:
        from sft_core.hub import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(model.config.backbone_name_or_path))
    return SRMScorer(model, tokenizer, batch_size=batch_size, device=device, show_progress=show_progress)
