"""YAML from files a user or an uploader controls: safe types only, no aliases, bounded size.

``yaml.safe_load`` blocks code execution but not an alias bomb: a few hundred bytes of nested ``&a``/``*a``
references expand to gigabytes. Aliases have no use in front matter or config files, so they are refused.
"""

from __future__ import annotations

from typing import Any

import yaml

from core.errors import InvalidInputError


class _NoAliasSafeLoader(yaml.SafeLoader):
    """``SafeLoader`` that raises on the first alias (``*name``) instead of expanding it."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str, *, where: str, max_chars: int = 65_536) -> Any:
    """Parse one YAML document from untrusted text.

    Raises:
        InvalidInputError: ``text`` is longer than ``max_chars``, uses an alias, or is not valid YAML;
            the message starts with ``where`` (a file name).
    """
    if len(text) > max_chars:
        raise InvalidInputError(f"{where}: YAML block of {len(text)} characters exceeds the {max_chars}-character limit")
    try:
        return yaml.load(text, Loader=_NoAliasSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise InvalidInputError(f"{where}: invalid YAML ({problem})") from None
