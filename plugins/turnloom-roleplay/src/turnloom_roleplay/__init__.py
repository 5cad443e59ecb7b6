"""turnloom-roleplay: Ditto-style role-play personas.

Components (registered by the ``roleplay`` entry point, see `turnloom_roleplay.plugin`):

- sampler ``persona-cards``: one character card per conversation;
- agent ``persona``: plays the character on its card;
- environment ``persona-questioner``: role-specific and contrastive questions,
  each labelled in-knowledge or out-of-knowledge in its turn's meta;
- judges ``persona-identity``, ``persona-knowledge`` and ``persona-rejection``.
"""

from turnloom_roleplay.cards import CardError, CharacterCard, load_cards, parse_card
from turnloom_roleplay.questioner import IN_KNOWLEDGE, OUT_OF_KNOWLEDGE

__all__ = ["IN_KNOWLEDGE", "OUT_OF_KNOWLEDGE", "CardError", "CharacterCard", "load_cards",
           "parse_card"]
