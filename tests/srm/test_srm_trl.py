"""`srm.reward_function()` as a TRL reward: formats, metrics, and a real GRPOTrainer run on a tiny policy."""

import pytest
import torch

import srm
from sft_core.testing import tiny_causal_lm, tiny_encoder
from srm.scoring import SRMScorer

from srm_test_utils import BAD, GOOD, PROMPTS

trl = pytest.importorskip("trl", reason="trl is a test extra (pip install -e '.[test]')")


def _tiny_srm():
    encoder, tokenizer = tiny_encoder()
    torch.manual_seed(0)
    model = srm.SRMModel.from_backbone(encoder, dimensions=["correctness", "style:style"], max_sequence_length=64,
                                       max_prompt_length=32)
    return model, tokenizer


def test_plain_and_conversational_inputs_get_the_srm_reward():
    model, tokenizer = _tiny_srm()
    reward = srm.reward_function(model, tokenizer, device="cpu")
    expected = [r.reward for r in SRMScorer(model, tokenizer, device="cpu").score(
        [(PROMPTS[0], GOOD[0]), (PROMPTS[0], BAD[0]), (PROMPTS[1], "   ")])]
    plain = reward(prompts=[PROMPTS[0], PROMPTS[0], PROMPTS[1]], completions=[GOOD[0], BAD[0], "   "])
    metrics = {}
    conversational = reward(
        prompts=[[{"role": "user", "content": PROMPTS[0]}]] * 2 + [[{"role": "user", "content": PROMPTS[1]}]],
        completions=[[{"role": "assistant", "content": GOOD[0]}], [{"role": "assistant", "content": BAD[0]}],
                     [{"role": "assistant", "content": [{"type": "text", "text": "   "}]}]],
        completion_ids=None, trainer_state=None, log_metric=lambda name, value: metrics.setdefault(name, value))
    assert all(isinstance(value, float) for value in plain)
    assert plain == pytest.approx(expected, abs=1e-6) and conversational == pytest.approx(expected, abs=1e-6)
    assert set(metrics) == {"srm/correctness", "srm/style"}
    with pytest.raises(TypeError, match="prompt must be a string or a list of messages"):
        reward(prompts=[3], completions=["x"])


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_grpo_trainer_runs_two_steps_on_the_srm_reward(conversational, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    policy, policy_tokenizer = tiny_causal_lm(seed=3)
    model, tokenizer = _tiny_srm()
    reward = srm.reward_function(model, tokenizer, device="cpu")
    calls = []

    def recording_reward(prompts, completions, **kwargs):
        calls.append(len(completions))
        return reward(prompts, completions, **kwargs)

    recording_reward.__name__ = "srm"
    prompts = PROMPTS[:4]
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts] if conversational
                                 else prompts})
    config = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                        max_completion_length=6, max_steps=2, learning_rate=1e-2, beta=0.0, logging_steps=1,
                        save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    trainer = GRPOTrainer(model=policy, reward_funcs=[recording_reward], args=config, train_dataset=dataset,
                          processing_class=policy_tokenizer)
    trainer.train()
    assert trainer.state.global_step == 2 and sum(calls) >= 2 * 4
    logged = [entry for entry in trainer.state.log_history if "rewards/srm/mean" in entry]
    assert len(logged) == 2 and all(entry["rewards/srm/mean"] == entry["rewards/srm/mean"] for entry in logged)
    assert all("srm/correctness" in entry and "srm/style" in entry for entry in logged)
    assert any(not torch.equal(before[name], p) for name, p in policy.named_parameters())  # the policy learned
