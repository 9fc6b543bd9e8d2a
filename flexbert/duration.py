"""The one reader of duration strings in config files: `1000ba`, `10_000_000tok`, `100000sp`, `1ep`, `0.1dur`.

Composer's `Time.from_timestring` does the parsing; this adds what config files need on top: `_` digit
separators, and one-line errors that name the key and show the accepted forms (a bare number gets a hint
that it needs a unit).
"""

from __future__ import annotations

from typing import Any

from flexbert.schema import ConfigError

EXAMPLES = "1000ba, 10_000_000tok, 1ep or 0.5dur"


def parse_duration(key: str, value: Any, error: type = ConfigError):
    """A Composer `Time` from a config value, or `error` naming the key and the accepted forms."""
    from composer.core import Time

    if isinstance(value, Time):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise error(f"`{key}: {value}` has no unit; write e.g. {value}ba (batches), {value}ep (epochs), "
                    f"{value}sp (samples) or {value}tok (tokens)")
    if not isinstance(value, str):
        raise error(f"`{key}`: {value!r} is not a Composer duration; use e.g. {EXAMPLES}")
    try:
        return Time.from_timestring(value.replace("_", ""))
    except ValueError:
        raise error(f"`{key}`: {value!r} is not a Composer duration; use e.g. {EXAMPLES}") from None
