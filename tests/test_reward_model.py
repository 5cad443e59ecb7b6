"""The reward-model scorer: a tiny randomly initialised sequence classifier built
from a config (no hub), saved to a folder, and run end to end in a scripted run;
its scores equal a direct forward pass over the chat-template render."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import turnloom
from turnloom.plugins import get_plugin_manager

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
            "{% endfor %}")
LINES = ["Start with a small test case.", "Split the problem in two.", "A loop will do."]


def tiny_reward_model(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for text in LINES + ["How do I sum a list?", "And if it is empty?"]
                    for w in text.split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<|user|>", "<|assistant|>",
                                         "<|end|>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                unk_token="<unk>")
    fast.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=2, num_labels=1, pad_token_id=0)
    model = transformers.LlamaForSequenceClassification(config)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_reward_model(tmp_path_factory.mktemp("rm") / "model")


@functools.lru_cache(maxsize=2)
def loaded(path: Path) -> tuple[Any, Any]:
    return (transformers.AutoTokenizer.from_pretrained(path),
            transformers.AutoModelForSequenceClassification.from_pretrained(path).eval())


def direct(path: Path, messages: list[dict[str, str]]) -> float:
    tok, model = loaded(path)
    text = tok.apply_chat_template(messages, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return float(model(torch.tensor([ids])).logits[0, 0])


def test_reward_model_scores_match_a_direct_forward_pass(rm_dir: Path, tmp_path: Path) -> None:
    s = turnloom.Scenario.from_dict({
        "run": {"name": "rm", "conversations": 2, "max_turns": 4, "seed": 1},
        "backends": {"sim": {"type": "scripted", "lines": LINES}},
        "participants": [
            {"name": "student", "agent": "scripted-user",
             "settings": {"lines": ["How do I sum a list?", "And if it is empty?"]}},
            {"name": "tutor", "agent": "assistant", "system_prompt": "You are a tutor."}],
        "scorers": [{"name": "reward-model", "settings": {"model": str(rm_dir)}}],
    })
    turnloom.run(s, out=tmp_path / "run", progress=False,
                 plugin_manager=get_plugin_manager(autoload=False))
    records = [json.loads(x) for x in (tmp_path / "run" / "conversations.jsonl").read_text()
               .splitlines()]
    assert len(records) == 2
    for r in records:
        msgs = [m for m in r["messages"] if m["role"] in ("user", "assistant")]
        assert len(msgs) == 4
        plain = [{"role": m["role"], "content": m["content"]} for m in msgs]
        for i, turn in enumerate(r["turns"]):
            if turn["role"] == "assistant":  # the reward of the dialogue up to this turn
                assert turn["scores"]["reward-model"]["reward"] == pytest.approx(
                    direct(rm_dir, plain[:i + 1]), abs=1e-5)
            else:
                assert "reward-model" not in turn["scores"]
        assert r["scores"]["reward-model"]["reward"] == pytest.approx(direct(rm_dir, plain),
                                                                        abs=1e-5)


def test_reward_model_settings_are_checked_without_loading(tmp_path: Path) -> None:
    from turnloom.builtin.reward_model import RewardModelScorer

    with pytest.raises(ValueError, match="invalid reward-model settings"):
        RewardModelScorer({})
    with pytest.raises(ValueError, match="invalid reward-model settings"):
        RewardModelScorer({"model": "x", "temperature": 1})
    scorer = RewardModelScorer({"model": str(tmp_path / "missing")})
    with pytest.raises(OSError):
        scorer.reward([{"role": "user", "content": "hi"}])


def test_reward_model_module_imports_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from turnloom.builtin.reward_model import RewardModelScorer\n"
            "s = RewardModelScorer({'model': 'm'})\n"
            "try:\n    s.reward([])\nexcept RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "needs torch and transformers" in out.stdout
