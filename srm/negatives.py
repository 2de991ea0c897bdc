"""Off-prompt negatives: a good answer to a *different but similar* prompt, as the rejected side of a pair.

For each prompt, the nearest-neighbour prompt (cosine of prompt embeddings, e.g. the SRM's own frozen encoder)
lends its good answer; the on-prompt good answer must win. Such pairs teach (and test) the ``relevance``
dimension to be an on-topic judge, which preference data whose answers are all on-topic (RM-Bench) cannot.
Near-paraphrases (cosine above ``max_cosine``) are skipped: their good answer may be good for this prompt too.
"""

from __future__ import annotations

import hashlib

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
                     styles: tuple[int, ...] | None = (0,), relevance_dimension: str = "relevance") -> list[ResponseGroup]:
    """One group per distinct prompt: its own good answer(s) vs the good answer(s) of its nearest neighbour among
    ``groups`` (prompt embeddings in ``prompt_vectors``). Each pair carries the overall preference and a
    ``relevance_dimension`` label. An RM-Bench prompt gives one pair per style index in ``styles`` (style k vs
    style k, so length and markdown do not decide; default: the concise answers, the cheapest to encode);
    ``styles=None`` picks one style per prompt in rotation (``index % 3``)."""
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
        chosen_styles = [index % count] if styles is None else [k for k in styles if k < count] or [0]
        responses, pairs = [], []
        for k in chosen_styles:
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


def assign_stable_ranks(groups: list[ResponseGroup]) -> list[ResponseGroup]:
    """Give every group a rank in [0, 1) within its domain (order of a hash of the prompt: stable across runs and
    machines) and return them sorted by it, domains interleaved. Keeping ``rank < f`` is then the same share of
    every domain, and a smaller share is a subset of a larger one (a partly filled feature cache serves it)."""
    by_domain: dict[str, list[ResponseGroup]] = {}
    for group in groups:
        by_domain.setdefault(group_domain(group), []).append(group)
    for rows in by_domain.values():
        rows.sort(key=lambda g: hashlib.sha1(g.prompt.encode("utf-8")).hexdigest())
        for i, group in enumerate(rows):
            group.rank = i / len(rows)
    return sorted(groups, key=lambda g: g.rank)


def with_ranks_of(offprompt: list[ResponseGroup], sources: list[ResponseGroup]) -> list[ResponseGroup]:
    """Off-prompt groups inherit the rank of the group whose prompt they test."""
    rank = {g.prompt: getattr(g, "rank", 0.0) for g in sources}
    for group in offprompt:
        group.rank = rank.get(group.prompt, 0.0)
    return offprompt
