"""A reward-model scorer: a transformers sequence classifier run on the
conversation rendered with its tokenizer's chat template.

This is how REFUEL (Gao et al. 2024) rewards its dialogues: the official
`rank.py` renders the dialogue up to each assistant turn with the reward
model's chat template and takes the model's score, so a per-turn reward is
the reward of the conversation so far. Here `score_turn` gives exactly that
for the scored participant's turns (`reward` of the prefix ending with the
turn) and `score_conversation` the reward of the whole transcript up to that
participant's last message; pair exporters read either (``turn:rm.reward``
or ``rm.reward``).

The model is loaded on first use, so the scorer is importable and its
settings are checked without torch; running it needs the ``hf`` extra.
System prompts are not rendered (REFUEL's reward model sees only the user
and assistant messages); messages of other roles are skipped.
"""

from __future__ import annotations

from typing import Any, Mapping

import msgspec

from turnloom.records import ConversationState, TurnRecord
from turnloom.scoring import Score

_ROLES = ("user", "assistant")


class RewardModelSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model: str  # a local directory or a model id transformers can load
    participant: str | None = None  # whose turns are scored (default: assistant-role turns)
    label: int = 0  # which logit is the reward (ignored when the model returns `score`)
    max_length: int = 4096  # longer renders are truncated from the left (the oldest text)
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False  # e.g. ArmoRM, whose custom head returns `score`
    per_turn: bool = True


class RewardModelScorer:
    """Scores the conversation so far with a sequence-classification reward model."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            self.s = msgspec.convert(dict(settings), RewardModelSettings)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid reward-model settings: {exc}") from None
        if self.s.max_length < 8:
            raise ValueError("invalid reward-model settings: max_length must be at least 8")
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as exc:
            raise RuntimeError("the reward-model scorer needs torch and transformers "
                               "(pip install 'turnloom[hf]')") from exc
        dtype = getattr(torch, self.s.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"invalid reward-model settings: dtype {self.s.dtype!r} is not a "
                             "torch dtype")
        tok = AutoTokenizer.from_pretrained(self.s.model, trust_remote_code=self.s.trust_remote_code)
        if not getattr(tok, "chat_template", None):
            raise ValueError(f"reward model {self.s.model!r}: its tokenizer has no chat template")
        model = AutoModelForSequenceClassification.from_pretrained(
            self.s.model, dtype=dtype, trust_remote_code=self.s.trust_remote_code)
        self._tokenizer = tok
        self._model = model.to(self.s.device).eval()

    def _scored(self, participant: str, role: str) -> bool:
        if self.s.participant is not None:
            return participant == self.s.participant
        return role == "assistant"

    def reward(self, messages: list[dict[str, str]]) -> float:
        """The reward model's score of OpenAI-style messages."""
        self._load()
        import torch

        ids = self._tokenizer.apply_chat_template(messages, tokenize=True,
                                                  add_generation_prompt=False)
        if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):  # a BatchEncoding
            ids = ids["input_ids"]
        ids = list(ids)[-self.s.max_length:]
        with torch.no_grad():
            out = self._model(torch.tensor([ids], device=self.s.device))
        score = getattr(out, "score", None)
        value = score if score is not None else out.logits[0, self.s.label]
        return float(value.float().reshape(-1)[0].item())

    @staticmethod
    def rendered(messages: list[tuple[str, str, str]]) -> list[dict[str, str]]:
        return [{"role": role, "content": text} for _, role, text in messages if role in _ROLES]

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> Score | None:
        if not self.s.per_turn or not self._scored(turn.participant, turn.role):
            return None
        return {"reward": self.reward(self.rendered(conversation.messages[:turn.turn + 1]))}

    def score_conversation(self, conversation: ConversationState) -> Score | None:
        msgs = conversation.messages
        last = max((i for i, (who, role, _) in enumerate(msgs) if self._scored(who, role)),
                   default=None)
        if last is None:
            return None
        return {"reward": self.reward(self.rendered(msgs[:last + 1]))}
