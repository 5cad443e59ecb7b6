"""Sentence embeddings from a local causal LM, for semantic diversity.

No embedding model can be downloaded here, so the embedded default model
(SmolLM2-135M-Instruct, or any local transformers model directory) serves:
a text's vector is the mean of the last layer's hidden states over its
tokens. Cruder than a trained sentence encoder, but semantic, and it needs
nothing beyond the `hf` extra.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


def model_embedder(model: str = "smollm2-135m-instruct", batch_size: int = 16,
                   max_tokens: int = 512) -> Callable[[Sequence[str]], Any]:
    """`embed(texts) -> tensor [len(texts), hidden]` from a local model spec
    (see `turnloom.models.resolve_model`). Loads the model once, on the CPU."""
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

    return embed
