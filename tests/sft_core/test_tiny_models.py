"""The tiny random-config factories other tests rely on: offline, small, HF round-trippable."""

from __future__ import annotations

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from sft_core.testing import tiny_causal_lm, tiny_encoder


def test_tiny_encoder_forward_and_round_trip(tmp_path):
    model, tokenizer = tiny_encoder()
    assert sum(p.numel() for p in model.parameters()) < 200_000
    batch = tokenizer(["The cat sleeps on the sofa.", "hello"], padding=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], 32)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded(**batch).last_hidden_state, hidden)
    assert AutoTokenizer.from_pretrained(tmp_path)("The cat.")["input_ids"] == tokenizer("The cat.")["input_ids"]


def test_tiny_causal_lm_has_a_working_chat_template():
    model, tokenizer = tiny_causal_lm()
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                            add_generation_prompt=True, return_dict=True, return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    assert tokens[0] == "<|im_start|>" and tokens[-2:] == ["<|im_start|>", "assistant"]
    assert "[UNK]" not in tokens
    logits = model(**encoded).logits
    assert logits.shape == (1, len(tokens), len(tokenizer))


def test_tiny_causal_lm_trains(tmp_path):
    model, tokenizer = tiny_causal_lm()
    model.train()
    batch = tokenizer(["the cat sleeps on the sofa"], return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8
    model.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.vocab_size == len(tokenizer)
