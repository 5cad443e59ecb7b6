"""For components whose settings name other participants.

A component may define ``check_participants(names)`` (see turnloom.hookspecs); it
is called with the scenario's participant names when the component is built, by
``turnloom validate`` as by a run. `check_participant_names` is the check most
need: a typo then fails at the setting's line instead of scoring nothing.
"""

from __future__ import annotations

from typing import Sequence


def check_participant_names(names: Sequence[str], **settings: str | None) -> None:
    """Each of `settings` (setting name -> participant name; None: not set) names one
    of the scenario's participants `names`, else a ValueError whose ``setting`` is
    the setting's name, so the error points at its line."""
    for setting, name in settings.items():
        if name is not None and name not in names:
            exc = ValueError(f"{setting} {name!r} is not a participant of this scenario "
                             f"({', '.join(names)})")
            exc.setting = setting  # type: ignore[attr-defined]
            raise exc
