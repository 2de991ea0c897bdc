"""Custom feature branches (register_feature_branch) end to end, and the small-LM judge branch."""

import os

import pytest
import torch

from sft_core.testing import tiny_causal_lm, tiny_encoder
from srm import SRMConfig, SRMModel
from srm.branches import FeatureBranch, FeatureCache, JudgeBranch, register_feature_branch
from srm.data import PairLabel, ResponseGroup
from srm.scoring import SRMScorer
from srm.trainer import save_srm, train_srm

from srm_test_utils import BAD, GOOD, PROMPTS


class WordOverlapBranch(FeatureBranch):
    """Share of response words that occur in the prompt, and the response's log word count."""

    kind = "word_overlap"
    feature_size = 2
    monotone_features = ((0, 1),)

    def __init__(self, settings=None):
        self.settings = dict(settings or {})

    @property
    def cache_key(self):
        return f"word_overlap:{self.settings.get('lowercase', True)}"

    def extract(self, prompts, responses):
        rows = []
        for prompt, response in zip(prompts, responses):
            words = response.lower().split()
            known = set(prompt.lower().split())
            rows.append([sum(w in known for w in words) / max(1, len(words)), float(len(words))])
        return torch.tensor(rows).reshape(len(prompts), 2)


def _build_word_overlap(settings, device):
    return WordOverlapBranch(settings)


def _groups():
    return [ResponseGroup(p, [g, b], [PairLabel(0, 1, True, {"correctness": 1})]) for p, g, b in zip(PROMPTS, GOOD, BAD)]


def test_registered_branch_kind_works_end_to_end(tmp_path):
    register_feature_branch("word_overlap", _build_word_overlap, default_settings={"lowercase": True})
    # The config used to read its default-branch table unconditionally: KeyError for any registered kind.
    config = SRMConfig(dimensions=["correctness", "overlap:word_overlap"])
    assert config.feature_branches["word_overlap"] == {"lowercase": True}
    encoder, tokenizer = tiny_encoder()
    torch.manual_seed(0)
    model = SRMModel.from_backbone(encoder, dimensions=["correctness", "overlap:word_overlap"], max_sequence_length=64,
                                   max_prompt_length=32)
    assert model.config.used_feature_branches == ["word_overlap"]
    assert model.config.feature_branches["word_overlap"]["feature_size"] == 2
    train_srm(model, tokenizer, _groups(), os.fspath(tmp_path / "run"), save=False, num_train_epochs=2,
              batch_size=3, save_checkpoints=False, show_progress=False)
    model.eval()
    save_srm(model, tokenizer, tmp_path / "srm")
    loaded = SRMScorer.from_pretrained(os.fspath(tmp_path / "srm"), device="cpu")  # branch rebuilt by its builder
    assert isinstance(loaded.branches["word_overlap"], WordOverlapBranch)
    items = [(p, r) for p, g, b in zip(PROMPTS, GOOD, BAD) for r in (g, b)]
    before = SRMScorer(model, tokenizer, device="cpu").score(items)
    after = loaded.score(items)
    assert [round(a.reward, 5) for a in after] == [round(b.reward, 5) for b in before]
    assert set(after[0].dimensions) == {"correctness", "overlap"}


def test_unregistered_branch_kind_fails_with_a_clear_message():
    with pytest.raises(ValueError, match="register"):
        SRMConfig(dimensions=["x:no_such_kind"])


def test_judge_branch_reads_yes_no_probabilities_in_one_pass():
    lm, tokenizer = tiny_causal_lm()
    branch = JudgeBranch(lm, tokenizer, max_length=48, batch_size=2)
    long_response = " ".join(["the cat is good"] * 40)
    prompts = ["name a cat", "name a cat", "what day is it tomorrow"]
    responses = ["the cat name is key", long_response, "tomorrow is a good day"]
    features = branch.extract(prompts, responses)
    assert features.shape == (3, 2) and torch.isfinite(features).all()
    assert len(branch._sequence(prompts[1], long_response)) <= 48
    # same as scoring each item alone: left padding and position ids do not change the answer
    alone = torch.cat([branch.extract([p], [r]) for p, r in zip(prompts, responses)])
    torch.testing.assert_close(features, alone, rtol=1e-4, atol=1e-4)
    # the features are the next-token log-probabilities of the Yes / No answers after the question
    sequence = branch._sequence(prompts[0], responses[0])
    with torch.no_grad():
        log_probs = torch.log_softmax(lm(input_ids=torch.tensor([sequence])).logits[0, -1], -1)
    yes, no = torch.logsumexp(log_probs[branch.yes_ids], 0), torch.logsumexp(log_probs[branch.no_ids], 0)
    torch.testing.assert_close(features[0], torch.stack([yes - no, yes]), rtol=1e-4, atol=1e-4)


def test_judge_branch_is_cached_and_monotone_in_the_srm():
    lm, tokenizer = tiny_causal_lm()
    branch = JudgeBranch(lm, tokenizer, max_length=64)
    cache = FeatureCache()
    first = cache.get_or_compute(branch, ["name a cat"], ["key"])
    calls = []
    branch.extract = lambda p, r: calls.append(1)  # a cache hit must not run the LM
    torch.testing.assert_close(cache.get_or_compute(branch, ["name a cat"], ["key"]), first)
    assert not calls
    encoder, _ = tiny_encoder()
    model = SRMModel.from_backbone(encoder, dimensions=["correctness", "verified:judge"], max_sequence_length=64,
                                   feature_branches={"judge": JudgeBranch(lm, tokenizer, max_length=64)})
    assert model.config.feature_branches["judge"]["monotone"] == [[0, 1]]
    assert type(model.feature_scorers["verified"]).__name__ == "MonotoneScorer"


@pytest.mark.slow
def test_real_judge_prefers_the_on_topic_answer():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft_core.hub import ModelNotAvailableError, resolve_model

    try:
        path = resolve_model("smollm2-135m")
    except ModelNotAvailableError as error:
        pytest.skip(f"offline smollm2-135m not available: {error}")
    torch.set_num_threads(1)
    branch = JudgeBranch(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path))
    prompt = "What is the capital of France?"
    features = branch.extract([prompt, prompt], ["The capital of France is Paris.",
                                                 "Photosynthesis turns light into chemical energy in plants."])
    assert features[0, 0] > features[1, 0]
