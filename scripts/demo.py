"""`make demo`: show the toolkit's jobs end to end on the offline models (a few minutes on 2 CPU cores)."""

from __future__ import annotations

import sys
import time

import torch


def section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def offline_models_self_check() -> None:
    from sft_core.hub import describe_aliases, load_causal_lm, load_encoder, load_tokenizer
    from sft_core.offline_conversion import greedy_chat_answer, mean_pooled_embeddings

    section("offline models")
    for row in describe_aliases():
        print(f"{row['alias']:<14} {'ready' if row['ready'] else 'NOT READY':<10} {row['size_mb'] or '-':>7} MB  {row['path']}")

    model, tokenizer = load_encoder("minilm-l6").eval(), load_tokenizer("minilm-l6")
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
    vectors = mean_pooled_embeddings(model, tokenizer, sentences)
    print(f"minilm-l6: sim(food, bread)={float(vectors[0] @ vectors[1]):.3f}  sim(food, movie)={float(vectors[0] @ vectors[2]):.3f}")

    model, tokenizer = load_encoder("me5-small").eval(), load_tokenizer("me5-small")
    texts = ["query: Where is the train station?", "query: ¿Dónde está la estación de tren?", "query: I like ice cream."]
    vectors = mean_pooled_embeddings(model, tokenizer, texts)
    print(f"me5-small: sim(en, es translation)={float(vectors[0] @ vectors[1]):.3f}  sim(en, unrelated)={float(vectors[0] @ vectors[2]):.3f}")

    model, tokenizer = load_causal_lm("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
    question = "Name three primary colors."
    print(f"smollm2-135m: Q: {question}\n              A: {greedy_chat_answer(model, tokenizer, question, max_new_tokens=30)}")


def main() -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.time()
    offline_models_self_check()
    print(f"\ndemo finished in {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
