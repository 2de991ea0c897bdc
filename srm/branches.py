"""Independent feature branches of the SRM.

A feature branch is any object with

* ``kind``: the branch kind named by a :class:`~srm.configuration_srm.DimensionSpec`,
* ``feature_size``: length of the vector it returns per (prompt, response),
* ``extract(prompts, responses) -> FloatTensor[N, feature_size]`` (batched, no gradients),
* ``cache_key``: a string that changes whenever the features would change (model, settings).

Branches are frozen, so their outputs are cached per example (:class:`FeatureCache`) and can be computed in
parallel (:func:`compute_branch_features`). A generative "judge" branch (paper mode: a small LM writes or
scores a critique and exposes e.g. P("yes")) plugs in the same way: subclass :class:`FeatureBranch` and
register it with :func:`register_feature_branch`; :class:`JudgeBranch` is the built-in one.

``monotone_features`` lists ``(feature index, +1 | -1)`` for a branch's main raw signals: with
``SRMConfig.monotone_scorers`` the dimension score is monotone in them (see ``srm.modeling_srm.MonotoneScorer``).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from safetensors.torch import load_file, save as safetensors_bytes
from tqdm.auto import tqdm

from sft_core.atomic_io import atomic_write_bytes
from sft_core.nn_utils import mean_pool


class FeatureBranch:
    kind: str = ""
    feature_size: int = 0
    monotone_features: tuple[tuple[int, int], ...] = ()

    @property
    def cache_key(self) -> str:
        return self.kind

    def extract(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        raise NotImplementedError


class ModelFeatureBranch(FeatureBranch):
    """A feature branch that runs a model of its own (similarity encoder, causal LM) in batches."""

    def __init__(self, model, tokenizer, max_length: int, batch_size: int, name: str = "",
                 show_progress: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.show_progress = show_progress


# ---------------------------------------------------------------------------------------------------------
# style: deterministic text statistics
# ---------------------------------------------------------------------------------------------------------
REFUSAL_PATTERNS = [
    r"\bI(?:'m| am) (?:sorry|afraid|unable)\b", r"\bI (?:can(?:no|')t|cannot|won't|will not)\b",
    r"\bas an AI\b", r"\bI(?:'m| am) not able to\b", r"\b(?:illegal|unethical|harmful)\b",
    r"\bI (?:must|have to) (?:decline|refuse)\b", r"\bnot (?:appropriate|something I can)\b",
]
_REFUSAL_RE = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)
_HEADER_RE = re.compile(r"^\s{0,3}#{1,6}\s", re.MULTILINE)
_BULLET_RE = re.compile(r"^\s*[-*+]\s+\S", re.MULTILINE)
_NUMBERED_RE = re.compile(r"^\s*\d+[.)]\s+\S", re.MULTILINE)
_BOLD_RE = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
_CODE_FENCE_RE = re.compile(r"```")
_INLINE_CODE_RE = re.compile(r"`[^`\n]+`")
_TABLE_RE = re.compile(r"^\s*\|.*\|\s*$", re.MULTILINE)

STYLE_FEATURE_NAMES = (
    "log_chars", "log_words", "log_lines", "headers", "bullets", "numbered_items", "bold_spans",
    "code_blocks", "inline_code", "table_rows", "refusal_phrases", "log_length_ratio", "mean_word_length",
    "markdown_density",
)


def style_features(prompt: str, response: str) -> list[float]:
    words = response.split()
    lines = [line for line in response.splitlines() if line.strip()]
    headers = len(_HEADER_RE.findall(response))
    bullets = len(_BULLET_RE.findall(response))
    numbered = len(_NUMBERED_RE.findall(response))
    bold = len(_BOLD_RE.findall(response))
    code_blocks = len(_CODE_FENCE_RE.findall(response)) // 2
    table_rows = len(_TABLE_RE.findall(response))
    markdown_lines = headers + bullets + numbered + table_rows
    return [
        math.log1p(len(response)),
        math.log1p(len(words)),
        math.log1p(len(lines)),
        math.log1p(headers),
        math.log1p(bullets),
        math.log1p(numbered),
        math.log1p(bold),
        math.log1p(code_blocks),
        math.log1p(len(_INLINE_CODE_RE.findall(response))),
        math.log1p(table_rows),
        math.log1p(len(_REFUSAL_RE.findall(response))),
        math.log1p(len(response)) - math.log1p(len(prompt)),
        (sum(len(w) for w in words) / len(words)) if words else 0.0,
        markdown_lines / max(1, len(lines)),
    ]


class StyleBranch(FeatureBranch):
    """Length, markdown structure, lists, code blocks and refusal phrases, computed on the full text."""

    kind = "style"
    feature_size = len(STYLE_FEATURE_NAMES)

    @property
    def cache_key(self) -> str:
        return "style:v1"

    def extract(self, prompts, responses):
        return torch.tensor([style_features(p, r) for p, r in zip(prompts, responses)], dtype=torch.float32).reshape(
            len(prompts), self.feature_size)


# ---------------------------------------------------------------------------------------------------------
# similarity: embedding model, prompt vs response
# ---------------------------------------------------------------------------------------------------------
def length_sorted_order(texts: list[str]) -> list[int]:
    """Batch similar lengths together (less padding, much faster on CPU); undo with :func:`restore_order`."""
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


def restore_order(rows: torch.Tensor, order: list[int]) -> torch.Tensor:
    out = torch.empty_like(rows)
    out[torch.tensor(order, dtype=torch.long)] = rows
    return out


class SimilarityBranch(ModelFeatureBranch):
    """Cosine similarity of mean-pooled, normalized prompt and response embeddings from a *separate* embedding
    model, plus their element-wise product. Only used when the similarity model differs from the SRM's backbone;
    by default the SRM reuses its own encoder instead (``SharedSimilarityScorer``: no second model, no extra
    pass)."""

    kind = "similarity"
    monotone_features = ((0, 1),)  # the cosine

    def __init__(self, model, tokenizer, max_length: int = 128, batch_size: int = 32, name: str = "",
                 show_progress: bool = False):
        super().__init__(model, tokenizer, max_length, batch_size, name, show_progress)
        self.feature_size = int(model.config.hidden_size) + 1

    @property
    def cache_key(self) -> str:
        return f"similarity:{self.name}:{self.max_length}"

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        order = length_sorted_order(texts)
        chunks = []
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="similarity branch", disable=not self.show_progress or len(starts) < 2):
            batch_texts = [texts[i] for i in order[start:start + self.batch_size]]
            batch = self.tokenizer(batch_texts, truncation=True, max_length=self.max_length, padding=True,
                                   return_tensors="pt").to(device)
            hidden = self.model(**batch).last_hidden_state
            chunks.append(torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]).float(), dim=-1).cpu())
        if not chunks:
            return torch.zeros(0, self.feature_size - 1)
        return restore_order(torch.cat(chunks), order)

    def extract(self, prompts, responses):
        unique_prompts = list(dict.fromkeys(prompts))
        prompt_vectors = self.embed(unique_prompts)
        index = {p: i for i, p in enumerate(unique_prompts)}
        prompt_matrix = prompt_vectors[[index[p] for p in prompts]]
        response_matrix = self.embed(list(responses))
        product = prompt_matrix * response_matrix
        return torch.cat([product.sum(-1, keepdim=True), product], dim=-1)


# ---------------------------------------------------------------------------------------------------------
# likelihood: small causal LM, log p(response | prompt)
# ---------------------------------------------------------------------------------------------------------
LIKELIHOOD_FEATURE_NAMES = ("mean_logprob", "std_logprob", "min_logprob", "low_prob_fraction", "mean_entropy",
                            "log_tokens")


class LikelihoodBranch(ModelFeatureBranch):
    """Length-normalized log-likelihood of the response given the (chat-templated) prompt, plus its spread,
    the share of surprising tokens and the mean predictive entropy."""

    kind = "likelihood"
    feature_size = len(LIKELIHOOD_FEATURE_NAMES)
    monotone_features = ((0, 1),)  # mean token log-probability

    def __init__(self, model, tokenizer, max_length: int = 256, max_prompt_length: int = 128, batch_size: int = 8,
                 name: str = "", show_progress: bool = False):
        super().__init__(model, tokenizer, max_length, batch_size, name, show_progress)
        self.max_prompt_length = max_prompt_length

    @property
    def cache_key(self) -> str:
        return f"likelihood:{self.name}:{self.max_length}:{self.max_prompt_length}"

    def _prompt_ids(self, prompt: str) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                     tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            ids = self.tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"]
        return list(ids)[-self.max_prompt_length:]

    def _sequences(self, prompts, responses):
        for prompt, response in zip(prompts, responses):
            prompt_ids = self._prompt_ids(prompt)
            response_ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
            response_ids = response_ids[: max(1, self.max_length - len(prompt_ids))] or [self.tokenizer.eos_token_id or 0]
            yield prompt_ids, response_ids

    @torch.inference_mode()
    def extract(self, prompts, responses):
        device = next(self.model.parameters()).device
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        sequences = list(self._sequences(prompts, responses))
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
        rows = []
        starts = range(0, len(sequences), self.batch_size)
        for start in tqdm(starts, desc="likelihood branch", disable=not self.show_progress or len(starts) < 2):
            batch = [sequences[i] for i in order[start:start + self.batch_size]]
            width = max(len(p) + len(r) for p, r in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (p, r) in enumerate(batch):
                ids = p + r
                input_ids[row, :len(ids)] = torch.tensor(ids)
                attention[row, :len(ids)] = 1
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float().cpu()
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = input_ids[:, 1:]
            token_logprobs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            for row, (p, r) in enumerate(batch):
                # logits at position t predict token t+1: response tokens sit at [len(p), len(p)+len(r)).
                span = slice(len(p) - 1, len(p) + len(r) - 1)
                lp = token_logprobs[row, span].clamp(min=-30.0)
                rows.append([lp.mean().item(), lp.std(unbiased=False).item(), lp.min().item(),
                             (lp < -5.0).float().mean().item(), entropy[row, span].mean().item(), math.log1p(len(r))])
        if not rows:
            return torch.zeros(0, self.feature_size)
        return restore_order(torch.tensor(rows, dtype=torch.float32), order)


# ---------------------------------------------------------------------------------------------------------
# judge: a small causal LM answers a fixed verification question; P("Yes") in one forward pass
# ---------------------------------------------------------------------------------------------------------
JUDGE_QUESTION = ("Here is a user request and a response.\n\nRequest:\n{prompt}\n\nResponse:\n{response}\n\n"
                  "Does the response answer this request correctly and helpfully? Answer Yes or No.")
JUDGE_FEATURE_NAMES = ("yes_minus_no_logprob", "yes_logprob")


class JudgeBranch(ModelFeatureBranch):
    """A cheap LM judge: the chat-templated verification question :data:`JUDGE_QUESTION`, one forward pass, and
    the next-token log-probabilities of "Yes" and "No" (no generation). Features: ``log P(Yes) - log P(No)``
    (the monotone signal) and ``log P(Yes)``. Prompt and response are cut head+tail to fit ``max_length``."""

    kind = "judge"
    feature_size = len(JUDGE_FEATURE_NAMES)
    monotone_features = ((0, 1),)

    def __init__(self, model, tokenizer, max_length: int = 384, batch_size: int = 8, name: str = "",
                 show_progress: bool = False):
        super().__init__(model, tokenizer, max_length, batch_size, name, show_progress)
        self.yes_ids = self._answer_ids(("Yes", " Yes", "yes"))
        self.no_ids = self._answer_ids(("No", " No", "no"))

    def _answer_ids(self, words) -> list[int]:
        ids = []
        for word in words:
            tokens = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(tokens) == 1 and tokens[0] not in ids and tokens[0] != self.tokenizer.unk_token_id:
                ids.append(tokens[0])
        if not ids:
            raise ValueError("the judge tokenizer has no single-token Yes/No answers")
        return ids

    @property
    def cache_key(self) -> str:
        return f"judge:v1:{self.name}:{self.max_length}"

    def _sequence(self, prompt: str, response: str) -> list[int]:
        from .collate import head_tail

        def render(p, r):
            messages = [{"role": "user", "content": JUDGE_QUESTION.format(prompt=p, response=r)}]
            if getattr(self.tokenizer, "chat_template", None):
                ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            return self.tokenizer(messages[0]["content"] + "\nAnswer:", add_special_tokens=True)["input_ids"]

        ids = render(prompt, response)
        if len(ids) <= self.max_length:
            return ids
        # Too long: cut the middle of the prompt (to at most a third of the room) and of the response.
        overhead = len(render("", ""))
        room = max(8, self.max_length - overhead)
        tok = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        p_ids, r_ids = tok(prompt), tok(response)
        keep_p = min(len(p_ids), max(room // 3, room - len(r_ids)))
        keep_r = max(1, room - keep_p)
        p_text = self.tokenizer.decode(head_tail(p_ids, keep_p))
        r_text = self.tokenizer.decode(head_tail(r_ids, keep_r))
        return render(p_text, r_text)[-self.max_length:]

    @torch.inference_mode()
    def extract(self, prompts, responses):
        device = next(self.model.parameters()).device
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.tokenizer.eos_token_id or 0)
        sequences = [self._sequence(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        rows = []
        starts = range(0, len(sequences), self.batch_size)
        for start in tqdm(starts, desc="judge branch", disable=not self.show_progress or len(starts) < 2):
            batch = [sequences[i] for i in order[start:start + self.batch_size]]
            width = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(batch):  # left padding: the answer is predicted at the last position
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention[row, width - len(ids):] = 1
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                position_ids=positions.to(device)).logits[:, -1].float().cpu()
            log_probs = torch.log_softmax(logits, dim=-1)
            yes = torch.logsumexp(log_probs[:, self.yes_ids], dim=-1)
            no = torch.logsumexp(log_probs[:, self.no_ids], dim=-1)
            rows.extend(torch.stack([yes - no, yes], dim=-1).tolist())
        if not rows:
            return torch.zeros(0, self.feature_size)
        return restore_order(torch.tensor(rows, dtype=torch.float32), order)


# ---------------------------------------------------------------------------------------------------------
# registry, construction from a config, cache
# ---------------------------------------------------------------------------------------------------------
def _build_style(settings: dict, device: str) -> FeatureBranch:
    return StyleBranch()


def _build_similarity(settings: dict, device: str) -> FeatureBranch:
    from transformers import AutoModel, AutoTokenizer

    from sft_core.hub import resolve_model

    path = resolve_model(settings["model"])
    model = AutoModel.from_pretrained(path).to(device)
    return SimilarityBranch(model, AutoTokenizer.from_pretrained(path), max_length=settings.get("max_length", 128),
                            name=settings["model"])


def _build_likelihood(settings: dict, device: str) -> FeatureBranch:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft_core.hub import resolve_model

    path = resolve_model(settings["model"])
    model = AutoModelForCausalLM.from_pretrained(path).to(device)
    return LikelihoodBranch(model, AutoTokenizer.from_pretrained(path), max_length=settings.get("max_length", 256),
                            max_prompt_length=settings.get("max_prompt_length", 128), name=settings["model"])


def _build_judge(settings: dict, device: str) -> FeatureBranch:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft_core.hub import resolve_model

    path = resolve_model(settings["model"])
    model = AutoModelForCausalLM.from_pretrained(path).to(device)
    return JudgeBranch(model, AutoTokenizer.from_pretrained(path), max_length=settings.get("max_length", 384),
                       name=settings["model"])


FEATURE_BRANCH_BUILDERS: dict[str, Callable[[dict, str], FeatureBranch]] = {
    "style": _build_style, "similarity": _build_similarity, "likelihood": _build_likelihood, "judge": _build_judge,
}


def register_feature_branch(kind: str, builder: Callable[[dict, str], FeatureBranch],
                            default_settings: dict | None = None) -> None:
    """Make a new branch kind (e.g. a generative judge) usable by dimensions (``name:kind``) and buildable from
    ``SRMConfig.feature_branches``: ``builder(settings, device) -> FeatureBranch``. Register it (e.g. on import
    of your plugin module) before building or loading an SRM that uses it."""
    from .configuration_srm import register_branch_kind

    register_branch_kind(kind, default_settings)
    FEATURE_BRANCH_BUILDERS[kind] = builder


def build_feature_branches(config, overrides: dict[str, FeatureBranch] | None = None,
                           device: str = "cpu") -> dict[str, FeatureBranch]:
    """Instantiate the feature branches a config uses (``overrides`` supplies ready objects, e.g. tiny test
    models) and record each branch's ``feature_size`` in the config."""
    overrides = overrides or {}
    branches = {}
    for kind in config.used_feature_branches:
        settings = config.feature_branches.setdefault(kind, {})
        if kind in overrides:
            branch = overrides[kind]
        elif kind in FEATURE_BRANCH_BUILDERS:
            branch = FEATURE_BRANCH_BUILDERS[kind](settings, device)
        else:
            raise ValueError(f"feature branch kind {kind!r} has no builder in this process; register it with "
                             "srm.branches.register_feature_branch before building or loading this SRM")
        recorded = settings.get("feature_size")
        if recorded is not None and int(recorded) != branch.feature_size:
            raise ValueError(f"feature branch {kind!r} returns {branch.feature_size} features but the model was "
                             f"trained with {recorded}; use the same branch model/settings as in training")
        settings["feature_size"] = branch.feature_size
        settings.setdefault("monotone", [list(m) for m in getattr(branch, "monotone_features", ())])
        branches[kind] = branch
    return branches


class FeatureCache:
    """Per-example cache of frozen branch outputs, keyed by (branch settings, prompt, response); optionally
    persisted as one safetensors file (written atomically)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = os.fspath(path) if path else None
        self.vectors: dict[str, torch.Tensor] = {}
        if self.path and os.path.exists(self.path):
            self.vectors = dict(load_file(self.path))
        self.dirty = False

    @staticmethod
    def key(branch: FeatureBranch, prompt: str, response: str) -> str:
        digest = hashlib.sha1(f"{branch.cache_key}\x00{prompt}\x00{response}".encode("utf-8")).hexdigest()
        return f"{branch.kind}_{digest}"

    def get_or_compute(self, branch: FeatureBranch, prompts: list[str], responses: list[str]) -> torch.Tensor:
        keys = [self.key(branch, p, r) for p, r in zip(prompts, responses)]
        missing = list(dict.fromkeys(k for k in keys if k not in self.vectors))
        if missing:
            position = {k: i for i, k in enumerate(keys)}
            todo = [position[k] for k in missing]
            values = branch.extract([prompts[i] for i in todo], [responses[i] for i in todo])
            for k, value in zip(missing, values):
                self.vectors[k] = value.clone().contiguous()
            self.dirty = True
        if not keys:
            return torch.zeros(0, branch.feature_size)
        return torch.stack([self.vectors[k] for k in keys])

    def save(self) -> None:
        if not self.path or not self.dirty:
            return
        atomic_write_bytes(self.path, safetensors_bytes(self.vectors))
        self.dirty = False


def compute_branch_features(config, branches: dict[str, FeatureBranch], prompts: list[str], responses: list[str],
                            cache: FeatureCache | None = None, parallel: bool = False) -> torch.Tensor | None:
    """Concatenate every used branch's features in the config's layout -> ``[N, total_feature_size]``."""
    kinds = config.used_feature_branches
    if not kinds:
        return None

    def run(kind):
        branch = branches[kind]
        return cache.get_or_compute(branch, prompts, responses) if cache else branch.extract(prompts, responses)

    if parallel and len(kinds) > 1 and cache is None:
        with ThreadPoolExecutor(max_workers=len(kinds)) as pool:
            parts = list(pool.map(run, kinds))
    else:
        parts = [run(kind) for kind in kinds]
    return torch.cat([part.float() for part in parts], dim=-1)
