"""The plugin hooks: what turnloom_scorers registers (entry point ``scorers``)."""

from __future__ import annotations

import turnloom

from turnloom_scorers import diversity, ifeval, judges, multi_if, sysbench, wilt


@turnloom.hookimpl
def register_scorers(register):
    register("ifeval", ifeval.IfevalScorer)
    register("multi-if", multi_if.MultiIfScorer)
    register("sysbench", sysbench.SysbenchScorer)
    register("diversity", diversity.DiversityScorer)
    register("wilt", wilt.WiltScorer)


@turnloom.hookimpl
def register_environments(register):
    register("multi-if-user", multi_if.MultiIfUser)
    register("sysbench-user", sysbench.SysbenchUser)
    register("wilt", wilt.Wilt)


@turnloom.hookimpl
def register_agents(register):
    register("wilt-player", wilt.WiltPlayer)
    register("sysbench-assistant", sysbench.SysbenchAssistant)


@turnloom.hookimpl
def register_judges(register):
    register("single-score", judges.SingleScore)
    register("pairwise", judges.Pairwise)
    register("sysbench", sysbench.SysbenchJudge)
