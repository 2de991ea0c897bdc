"""Tiny random-config models and tokenizers for fast, fully offline unit tests.

The tokenizers are built in code (no files, no hub): a word-level vocabulary over lowercase words,
digits and punctuation, with the special tokens a BERT-style encoder or a chat causal LM needs.
Real weights are for smoke tests; logic is tested on these in milliseconds.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# A small closed vocabulary: enough for sentences the tests write, unknown words map to [UNK].
_COMMON_WORDS = """
the a an of to and in is it you that he was for on are with as i his they be at one have this from
or had by not but what all were we when your can said there use each which she do how their if will
up other about out many then them these so some her would make like him into time has look two more
write go see number no way could people my than first water been call who its now find long down day
did get come made may part yes ok good bad great poor best worst happy sad love hate movie film book
food key value name date total amount address phone question answer header other form page sum
positive negative neutral sports business world science tech news cat dog sofa train station weather
cold hot today tomorrow capital france paris london answer: question: assistant user system
""".split()
_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|im_start|>", "<|im_end|>", "<s>", "</s>"]
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_vocabulary() -> list[str]:
    symbols = list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation) + ["\n"]
    seen, vocabulary = set(), []
    for token in _SPECIAL_TOKENS + symbols + _COMMON_WORDS:
        if token not in seen:
            seen.add(token)
            vocabulary.append(token)
    return vocabulary


def _word_level_tokenizer() -> Tokenizer:
    vocab = {token: index for index, token in enumerate(tiny_vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    # Registered as special so "<|im_start|>" is matched whole before punctuation splitting.
    tokenizer.add_special_tokens(_SPECIAL_TOKENS)
    return tokenizer


def tiny_encoder_tokenizer() -> PreTrainedTokenizerFast:
    backend = _word_level_tokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", backend.token_to_id("[CLS]")), ("[SEP]", backend.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)


def tiny_causal_lm_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_word_level_tokenizer(), unk_token="[UNK]",
                                        pad_token="[PAD]", bos_token="<s>", eos_token="<|im_end|>",
                                        model_max_length=256)
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def tiny_encoder(hidden_size: int = 32, num_hidden_layers: int = 2, num_attention_heads: int = 2,
                 seed: int = 0, **config_overrides) -> tuple[BertModel, PreTrainedTokenizerFast]:
    """A randomly initialised BertModel (~0.1M params) and its matching offline tokenizer."""
    tokenizer = tiny_encoder_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                        num_attention_heads=num_attention_heads, intermediate_size=hidden_size * 2,
                        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, **config_overrides)
    torch.manual_seed(seed)
    return BertModel(config).eval(), tokenizer


def tiny_causal_lm(hidden_size: int = 32, num_hidden_layers: int = 2, num_attention_heads: int = 2,
                   seed: int = 0, **config_overrides) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised LlamaForCausalLM (~0.1M params) and a chat-template tokenizer."""
    tokenizer = tiny_causal_lm_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                         num_attention_heads=num_attention_heads, num_key_value_heads=num_attention_heads,
                         intermediate_size=hidden_size * 2, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, **config_overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
