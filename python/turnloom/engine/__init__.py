"""The simulation engine, one module per job:

- loop.py: the turn loop (start conversations, schedule, dispatch, completions);
- turns.py: replies applied as forest nodes, logged, scored; branches finished;
- judges.py: LLM judges about finished branches;
- accounting.py: the run's summary;
- state.py: trees, branches and jobs; checks.py: checks on plugin and backend output.
"""

from turnloom.engine.loop import Engine
from turnloom.engine.state import Branch, IndexStack, Job, RunStalled, Tree

__all__ = ["Branch", "Engine", "IndexStack", "Job", "RunStalled", "Tree"]
