"""Suite-wide settings.

Hypothesis runs derandomized: every run explores the same examples, so a property test that
passes in review passes in CI, and a failure reproduces exactly. Set
OPENPERPS_HYPOTHESIS_RANDOM=1 to explore new examples locally.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("openperps", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("explore" if os.environ.get("OPENPERPS_HYPOTHESIS_RANDOM") else "openperps")
