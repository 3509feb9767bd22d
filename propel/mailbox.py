"""What counts as an e-mail address, in one place: profiles accept only what the e-mail
channel can put on an SMTP command line as it is."""

from __future__ import annotations

import re

# Nothing that could end the address on the command line or start another command
# (whitespace, controls, angle brackets, stray quotes); a local part may be a quoted
# string ("john doe"@shop.example).
_ATOMS = r'[^\s\x00-\x1f\x7f<>"@]+'
_QUOTED = r'"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*"'
MAILBOX = re.compile(f"(?:{_ATOMS}|{_QUOTED})@{_ATOMS}")
# What a profile may hold: a mailbox whose domain has a dot, as the public internet's do.
PROFILE_MAILBOX = re.compile(f"(?:{_ATOMS}|{_QUOTED})@{_ATOMS}\\.{_ATOMS}")
MAX_LENGTH = 320


def is_profile_mailbox(address: str) -> bool:
    return len(address) <= MAX_LENGTH and PROFILE_MAILBOX.fullmatch(address) is not None
