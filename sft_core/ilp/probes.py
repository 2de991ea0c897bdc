"""Model-side measurements the signals are computed from (torch): target scoring, generation, embeddings.

Every function takes a model, a tokenizer and :class:`~sft_core.ilp.items.Item`-like prompts, runs in
``eval`` mode without gradients, and returns numpy arrays or strings. Prompts are encoded exactly as
:mod:`sft_core.sft_data` encodes them for training (same chat-template segments, tokenised one
segment at a time), so "the target" here is the very token sequence the loss was computed on.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sft_core.sft_data import IGNORE_INDEX, render_segments

NEUTRAL_CONTENT = ""  # user turns are blanked to ask "how likely is this target without the input?"


def _segment_ids(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation; only the *last* completion segment is labelled."""
    segments = render_segments(messages, tokenizer)
    last_completion = max(i for i, (_, trainable) in enumerate(segments) if trainable)
    input_ids, labels = [], []
    for position, (text, trainable) in enumerate(segments):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if position == last_completion else [IGNORE_INDEX] * len(ids)
    return input_ids, labels


def encode_completion(prompt_messages: Sequence[dict], completion: str, tokenizer, max_length: int = 512,
                      content_only: bool = False):
    """``(input_ids, labels)`` for ``prompt + assistant completion``; over-long prompts lose tokens
    from the left (like training), completions are cut from the right.

    ``content_only`` labels only the completion's own tokens, not the template's closing tokens
    (end-of-turn, newline) that follow them: those are near-certain under any chat model and would
    dilute per-token comparisons between different answers to the same prompt.
    """
    messages = [dict(m) for m in prompt_messages] + [{"role": "assistant", "content": completion}]
    input_ids, labels = _segment_ids(messages, tokenizer)
    if content_only and completion:
        first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        content = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if content and input_ids[first:first + len(content)] == content:
            labels = labels[:first + len(content)] + [IGNORE_INDEX] * (len(labels) - first - len(content))
    if len(input_ids) > max_length:
        first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        cut = min(len(input_ids) - max_length, first)
        input_ids, labels = input_ids[cut:][:max_length], labels[cut:][:max_length]
    return input_ids, labels


def encode_prompt(prompt_messages: Sequence[dict], tokenizer, max_length: int = 512) -> list[int]:
    """The ids a generation starts from: the training encoding up to where the completion begins."""
    input_ids, labels = encode_completion(prompt_messages, "x", tokenizer, max_length=10**9)
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    return input_ids[:first][-max_length:]


def neutral_prompt(prompt_messages: Sequence[dict]) -> list[dict]:
    """The same conversation with every user turn blanked (system instructions kept)."""
    return [{"role": m["role"], "content": NEUTRAL_CONTENT if m["role"] == "user" else m["content"]}
            for m in prompt_messages]


def _pad_left(sequences: list[list[int]], pad_id: int):
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, longest - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
            mask[row, longest - len(sequence):] = 1
    return ids, mask


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)


def _forward_last_logits(model, ids, mask, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions of a left-padded batch (lm-head only where needed)."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    try:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
    except TypeError:  # models without logits_to_keep
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -keep:]


@contextlib.contextmanager
def evaluation_mode(model):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def score_encoded(model, encoded: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 16,
                  reference_model=None, progress: str | None = None) -> dict[str, np.ndarray]:
    """Teacher-forced scores of labelled sequences.

    Returns ``loss`` (mean NLL of the labelled tokens), ``prob`` (``exp(-loss)``: the geometric-mean
    token probability), ``correct`` (every labelled token is the argmax: the model would reproduce the
    target under greedy decoding), each ``[N]``; with ``reference_model`` also ``js``: the mean
    Jensen-Shannon divergence between the two models' next-token distributions over the labelled
    positions (see :func:`sft_core.ilp.signals.js_divergence`).
    """
    n = len(encoded)
    out = {"loss": np.full(n, np.nan), "prob": np.full(n, np.nan), "correct": np.zeros(n, dtype=bool)}
    if reference_model is not None:
        out["js"] = np.full(n, np.nan)
    device = _device(model)
    # Longest first: similar lengths share a batch, little padding.
    order = sorted(range(n), key=lambda i: -len(encoded[i][0]))
    bar = tqdm(total=n, desc=progress, disable=progress is None, leave=False, unit="sample")
    models = [model] + ([reference_model] if reference_model is not None else [])
    with contextlib.ExitStack() as stack:
        for m in models:
            stack.enter_context(evaluation_mode(m))
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            ids, mask = _pad_left([encoded[i][0] for i in rows], pad_id)
            labels, _ = _pad_left([encoded[i][1] for i in rows], IGNORE_INDEX)
            labels[mask == 0] = IGNORE_INDEX
            first_label = [(labels[r] != IGNORE_INDEX).nonzero()[0].item() for r in range(len(rows))]
            keep = ids.shape[1] - min(first_label) + 1
            targets = labels[:, -keep + 1:] if keep > 1 else labels[:, :0]
            valid = targets != IGNORE_INDEX
            ids, mask = ids.to(device), mask.to(device)
            logits = _forward_last_logits(model, ids, mask, keep)[:, :-1].float().cpu()
            log_probs = torch.log_softmax(logits, dim=-1)
            safe_targets = targets.clamp(min=0)
            token_lp = log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
            argmax_ok = (logits.argmax(-1) == targets) | ~valid
            counts = valid.sum(-1).clamp(min=1)
            mean_lp = (token_lp * valid).sum(-1) / counts
            if reference_model is not None:
                ref_logits = _forward_last_logits(reference_model, ids.to(_device(reference_model)),
                                                  mask.to(_device(reference_model)), keep)[:, :-1].float().cpu()
                js = js_divergence_torch(torch.log_softmax(ref_logits, -1), log_probs)
                js_mean = (js * valid).sum(-1) / counts
            for r, i in enumerate(rows):
                out["loss"][i] = -mean_lp[r].item()
                out["prob"][i] = float(np.exp(mean_lp[r].item()))
                out["correct"][i] = bool(argmax_ok[r].all())
                if reference_model is not None:
                    out["js"][i] = js_mean[r].item()
            bar.update(len(rows))
    bar.close()
    return out


def js_divergence_torch(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between distributions given as log-probabilities, over the last
    axis; the torch twin of :func:`sft_core.ilp.signals.js_divergence`."""
    log_m = torch.logaddexp(log_p, log_q) - torch.log(torch.tensor(2.0))
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return (0.5 * kl_pm + 0.5 * kl_qm).clamp(min=0.0)


def score_completions(model, tokenizer, prompts: Sequence[Sequence[dict]], completions: Sequence[str],
                      batch_size: int = 16, max_length: int = 512, reference_model=None,
                      progress: str | None = None, content_only: bool = False) -> dict[str, np.ndarray]:
    """Teacher-forced ``loss``/``prob``/``correct`` (and ``js`` against ``reference_model``) of each
    ``completion`` after its prompt; see :func:`score_encoded` and ``content_only`` in
    :func:`encode_completion`."""
    encoded = [encode_completion(p, c, tokenizer, max_length, content_only) for p, c in zip(prompts, completions)]
    return score_encoded(model, encoded, _pad_id(tokenizer), batch_size, reference_model, progress)


def generate_answers(model, tokenizer, prompts: Sequence[Sequence[dict]], num_samples: int = 0,
                     max_new_tokens: int | Sequence[int] = 32, temperature: float = 0.7, top_p: float = 0.95,
                     batch_size: int = 16, max_length: int = 512, seed: int = 0,
                     progress: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Greedy answer and ``num_samples`` sampled answers for each prompt -> ``(greedy [N], samples [N][S])``.

    ``max_new_tokens`` may be one number or one per prompt (a batch uses its largest).
    """
    n = len(prompts)
    budgets = [int(max_new_tokens)] * n if np.isscalar(max_new_tokens) else [int(b) for b in max_new_tokens]
    encoded = [encode_prompt(p, tokenizer, max_length) for p in prompts]
    pad_id = _pad_id(tokenizer)
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        eos |= set(configured if isinstance(configured, (list, tuple)) else [configured])
    eos_ids = sorted(int(e) for e in eos) or None
    greedy, samples = [""] * n, [[] for _ in range(n)]
    order = sorted(range(n), key=lambda i: -len(encoded[i]))
    device = _device(model)
    generator_seed = torch.Generator().manual_seed(int(seed))
    bar = tqdm(total=n, desc=progress, disable=progress is None, leave=False, unit="prompt")

    def decode(rows_out, prompt_length):
        return [tokenizer.decode(row[prompt_length:], skip_special_tokens=True).strip() for row in rows_out]

    with evaluation_mode(model):
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            ids, mask = _pad_left([encoded[i] for i in rows], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            budget = max(budgets[i] for i in rows)
            common = dict(attention_mask=mask, max_new_tokens=budget, pad_token_id=pad_id, eos_token_id=eos_ids)
            out = model.generate(ids, do_sample=False, num_beams=1, **common)
            for i, text in zip(rows, decode(out.cpu(), ids.shape[1])):
                greedy[i] = text
            if num_samples > 0:
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator_seed)))
                out = model.generate(ids, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                                     num_return_sequences=num_samples, **common)
                texts = decode(out.cpu(), ids.shape[1])
                for r, i in enumerate(rows):
                    samples[i] = texts[r * num_samples:(r + 1) * num_samples]
            bar.update(len(rows))
    bar.close()
    return greedy, samples


def embed_texts(texts: Sequence[str], encoder: str = "minilm-l6", batch_size: int = 32, max_length: int = 128,
                progress: str | None = None) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings ``[N, D]`` from an encoder alias/directory."""
    from sft_core.hub import load_encoder, load_tokenizer
    from sft_core.nn_utils import mean_pool

    tokenizer = load_tokenizer(encoder)
    model = load_encoder(encoder)
    chunks = []
    with evaluation_mode(model):
        for start in tqdm(range(0, len(texts), batch_size), desc=progress, disable=progress is None, leave=False):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            pooled = mean_pool(hidden, batch["attention_mask"])
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))
