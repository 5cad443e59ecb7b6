"""turnloom scorers, judges and environments.

- IFEval's verifiable instructions (`instructions`, `ifeval`) and Multi-IF's
  multi-turn following (`multi_if`);
- SysBench's constraint checklists and CSR/ISR/SSR (`sysbench`);
- LLM judges run through the engine: single score, pairwise, SysBench (`judges`);
- lexical diversity (`diversity`);
- the WILT inductive-logic environment (`wilt`, with `safe_lambda`).

The plugin hooks live in `turnloom_scorers.plugin` (entry point ``scorers``).
"""

__version__ = "0.1.0"
