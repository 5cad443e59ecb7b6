"""Text vectors from a local causal LM: mean-pooled hidden states, for diversity.

What this is, plainly: a text's vector is the mean of the last layer's hidden
states of a causal language model (by default the embedded SmolLM2-135M-Instruct,
or any local transformers model directory) over its tokens. It is not a trained
sentence encoder: nothing taught these vectors to put paraphrases together, and
those of SmolLM2-135M crowd together (four sentences on unrelated topics, bread,
stocks, a cat, physics, score 0.65 to 0.82 against each other), so
a similarity from them is comparable only with another from the same embedder,
never with a sentence encoder's numbers in a paper. Its name says so:
`mean_pool_embedder`, reported as ``<model>-mean-pool`` (`embed.name`).
It needs nothing beyond the `hf` extra.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


def mean_pool_embedder(model: str = "smollm2-135m-instruct", batch_size: int = 16,
                       max_tokens: int = 512) -> Callable[[Sequence[str]], Any]:
    """`embed(texts) -> tensor [len(texts), hidden]`: mean-pooled last hidden states
    of a local causal LM (see `turnloom.models.resolve_model`), not a trained
    sentence encoder. Loads the model once, on the CPU; `embed.name` is
    ``"<model>-mean-pool"``."""
    import torch
    from transformers import AutoModelForCausalLM

    from turnloom.hf_tokenizer import HFTokenizer
    from turnloom.models import resolve_model

    path = resolve_model(model)
    tokenizer = HFTokenizer.from_dir(path, name=model)
    lm = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    lm.eval()

    def embed(texts: Sequence[str]) -> Any:
        out = []
        ids_all = [tokenizer.encode(t)[:max_tokens] or [0] for t in texts]
        for start in range(0, len(ids_all), batch_size):
            chunk = ids_all[start:start + batch_size]
            width = max(len(ids) for ids in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):  # right padding: positions start at 0
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            with torch.no_grad():
                hidden = lm(input_ids=ids, attention_mask=mask,
                            output_hidden_states=True).hidden_states[-1]
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            out.append((hidden * weights).sum(1) / weights.sum(1))
        return torch.cat(out)

    embed.name = f"{model}-mean-pool"  # type: ignore[attr-defined]
    return embed


# The former name, kept for callers; it is the same mean-pooling embedder.
model_embedder = mean_pool_embedder
