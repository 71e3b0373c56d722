"""Test-wide settings: offline hub, hypothesis profiles.

Profiles (HYPOTHESIS_PROFILE): ``ci`` (default, 50 examples per property), ``dev`` (10, quick
local iteration), ``thorough`` (1000).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hypothesis import HealthCheck, settings

_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("dev", max_examples=10, **_common)
settings.register_profile("ci", max_examples=50, **_common)
settings.register_profile("thorough", max_examples=1000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
