"""turnloom-usp: a user simulator with implicit profiles (USP).

Components (registered by the ``usp`` entry point, see `turnloom_usp.plugin`):

- agent ``usp-user``: plays a user from a profile, ends with an end marker;
- sampler ``usp-profiles``: diverse profiles from the shipped bank (density-weighted,
  with virtual profiles);
- judges ``usp-extract`` and ``usp-consistency``: the profile extractor, and cycle
  consistency against the target profile;
- scorers ``usp-loops`` (early-stop loops) and ``usp-faults`` (simulator faults);
- `turnloom_usp.diversity.diversity`: diversity across users over exported records.
"""

from turnloom_usp.consistency import ProfileMatch, compare_profiles
from turnloom_usp.extractor import parse_extracted_profile
from turnloom_usp.profile import BigFive, Facts, Profile, ProfileError, Traits, parse_profile
from turnloom_usp.render import render_profile

__all__ = [
    "BigFive",
    "Facts",
    "Profile",
    "ProfileError",
    "ProfileMatch",
    "Traits",
    "compare_profiles",
    "parse_extracted_profile",
    "parse_profile",
    "render_profile",
]
