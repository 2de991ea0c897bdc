"""Off-prompt negatives: a good answer to a *different but similar* prompt, as the rejected side of a pair.

For each prompt, the nearest-neighbour prompt (cosine of prompt embeddings, e.g. the SRM's own frozen encoder)
lends its good answer; the on-prompt good answer must win. Such pairs teach (and test) the ``relevance``
dimension to be an on-topic judge, which preference data whose answers are all on-topic (RM-Bench) cannot.
Near-paraphrases (cosine above ``max_cosine``) are skipped: their good answer may be good for this prompt too.
"""

from __future__ import annotations

import torch

from .data import PairLabel, ResponseGroup

OFFPROMPT = "offprompt"


def good_responses(group: ResponseGroup) -> list[str]:
    """The chosen answers: RM-Bench's three styles (concise, detailed, markdown), or the better answer of the
    group's first pair."""
    if group.rmbench:
        return group.responses[:3]
    if not group.pairs:
        return []
    return [group.responses[group.pairs[0].better]]


def group_domain(group: ResponseGroup) -> str:
    return group.domain if group.rmbench else (getattr(group, "dataset", "") or group.source or "other")


def offprompt_groups(groups: list[ResponseGroup], prompt_vectors: dict[str, torch.Tensor], max_cosine: float = 0.9,
                     all_styles: bool = True, relevance_dimension: str = "relevance") -> list[ResponseGroup]:
    """One group per distinct prompt: its own good answer(s) vs the good answer(s) of its nearest neighbour among
    ``groups`` (prompt embeddings in ``prompt_vectors``). Each pair carries the overall preference and a
    ``relevance_dimension`` label. With ``all_styles`` an RM-Bench prompt gives three pairs (style k vs style k,
    so length and markdown do not decide); otherwise one, with style ``index % 3``."""
    first: dict[str, ResponseGroup] = {}
    for group in groups:
        if good_responses(group):
            first.setdefault(group.prompt, group)
    unique = list(first)
    if len(unique) < 2:
        return []
    matrix = torch.nn.functional.normalize(torch.stack([prompt_vectors[p] for p in unique]).float(), dim=-1)
    similarity = matrix @ matrix.T
    similarity.fill_diagonal_(-2.0)
    similarity[similarity > max_cosine] = -2.0
    out = []
    for index, prompt in enumerate(unique):
        best = int(similarity[index].argmax())
        if similarity[index, best] <= -2.0:
            continue  # every other prompt is a near-paraphrase
        own, neighbour = first[prompt], first[unique[best]]
        mine, theirs = good_responses(own), good_responses(neighbour)
        count = min(len(mine), len(theirs))
        styles = range(count) if all_styles else [index % count]
        responses, pairs = [], []
        for k in styles:
            responses += [mine[k], theirs[k]]
            pairs.append(PairLabel(len(responses) - 2, len(responses) - 1, True, {relevance_dimension: 1}))
        domain = group_domain(own)
        group = ResponseGroup(prompt, responses, pairs, format=OFFPROMPT, source=OFFPROMPT,
                              domain=f"{OFFPROMPT}/{domain}", subset=domain,
                              record_id=f"{own.record_id}~{neighbour.record_id}")
        group.dataset = OFFPROMPT
        out.append(group)
    return out


def embed_prompts(model, tokenizer, prompts: list[str], cache=None) -> dict[str, torch.Tensor]:
    """Prompt embeddings from the SRM's own (frozen) encoder, the gate's prompt pass, optionally cached."""
    from .branches import FeatureCache
    from .collate import EncoderEmbeddingBranch

    unique = list(dict.fromkeys(prompts))
    cache = cache if cache is not None else FeatureCache()
    vectors = cache.get_or_compute(EncoderEmbeddingBranch(model, tokenizer, "prompt", show_progress=False), unique,
                                   [""] * len(unique))
    return dict(zip(unique, vectors))
