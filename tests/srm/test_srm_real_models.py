"""Side branches on the real offline models (skipped when an alias cannot be resolved)."""

import pytest

pytestmark = pytest.mark.slow


def _load(alias, loader):
    from sft_core.hub import ModelNotAvailableError, resolve_model

    try:
        path = resolve_model(alias)
    except ModelNotAvailableError as error:
        pytest.skip(str(error))
    from transformers import AutoTokenizer

    return loader.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_likelihood_branch_prefers_fluent_answers():
    from transformers import AutoModelForCausalLM

    from srm.branches import LikelihoodBranch

    model, tokenizer = _load("smollm2-135m", AutoModelForCausalLM)
    branch = LikelihoodBranch(model, tokenizer, max_length=64, max_prompt_length=32)
    prompt = "What is the capital of France?"
    features = branch.extract([prompt, prompt], ["The capital of France is Paris.",
                                                 "Banana seventeen purple the of Paris window."])
    assert features.shape == (2, branch.feature_size)
    assert features[0, 0] > features[1, 0] + 1.0  # mean token log-prob: fluent answer far more likely


def test_similarity_branch_prefers_on_topic_answers():
    from transformers import AutoModel

    from srm.branches import SimilarityBranch

    model, tokenizer = _load("minilm-l6", AutoModel)
    branch = SimilarityBranch(model, tokenizer, max_length=64)
    prompt = "How do I bake sourdough bread?"
    features = branch.extract([prompt, prompt], ["Mix flour, water and starter, let it rise, then bake at 230 C.",
                                                 "The stock market closed higher on Tuesday."])
    assert features.shape == (2, 385) and features[0, 0] > features[1, 0] + 0.2
