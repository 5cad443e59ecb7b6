"""Socratic code debugging for turnloom (TreeInstruct).

Components (see the package README): a dataset of small buggy Python problems,
a sandbox that runs code against unit tests, the `socratic-tutor` and
`socratic-student` agents, the `socratic-verifier` and
`socratic-scripted-student` environments, the `socratic-problems` sampler, the
`socratic-bugs-fixed`, `socratic-tutor-turns` and `socratic-leakage` scorers and
the `socratic-relevance` judge.
"""

from turnloom_socratic.dataset import Bug, Case, DatasetError, Fix, Problem, Variant, load_problems
from turnloom_socratic.sandbox import Limits, SandboxResult, run_tests
from turnloom_socratic.state import MachineSettings, TutorState, step

__all__ = ["Bug", "Case", "DatasetError", "Fix", "Limits", "MachineSettings", "Problem",
           "SandboxResult", "TutorState", "Variant", "load_problems", "run_tests", "step"]
