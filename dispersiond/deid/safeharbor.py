"""HIPAA Safe Harbor rules shared by the FHIR and HL7 modules (45 CFR 164.514(b)(2))."""
from __future__ import annotations

import re

_ZIP = re.compile(r"^(\d{3})\d{2}(-\d{4})?$")
# Three-digit ZIP areas with 20,000 people or fewer (HHS de-identification guidance, 2000
# Census): Safe Harbor requires 000 for them.
_SMALL_ZIP3 = frozenset({"036", "059", "063", "102", "203", "556", "692", "790", "821", "823",
                         "830", "831", "878", "879", "884", "890", "893"})
_US = frozenset({"", "US", "USA", "United States"})


def zip3(code: object, country: object) -> str | None:
    """The three-digit ZIP Safe Harbor allows, or None when the code must go.

    The rule is for US ZIP codes: a postal code of another country is removed. A missing
    country counts as US (US records seldom carry one).
    """
    if not isinstance(code, str) or (country is not None and country not in _US):
        return None
    m = _ZIP.match(code.strip())
    if m is None:
        return None
    return "000" if m.group(1) in _SMALL_ZIP3 else m.group(1)
