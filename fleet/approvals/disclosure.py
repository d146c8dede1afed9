"""Art. 13: every message an agent sends to a counterparty says that it comes from an AI.

Whoever sends a message on an agent's behalf passes the body through
:func:`with_ai_disclosure` (the text is ``transparency.ai_disclosure`` in the
policy)::

    body = with_ai_disclosure(
        body, agent_id=agent.agent_id, fleet=agent.fleet,
        template=policy.transparency.ai_disclosure,
    )
    gateway.run(tools.send_message(to, subject, body))

Adding it twice is harmless: a body that already carries the line is returned as is.
"""

from __future__ import annotations

import re

DEFAULT_TEMPLATE = (
    "[Automated message: sent by AI agent {agent_id} of fleet {fleet}, "
    "operated by Fleet Commander.]"
)

# What a reader (or the gateway's compliance check) recognises as a disclosure.
_DISCLOSED = re.compile(r"\bAI\b|artificial intelligence|automated agent", re.IGNORECASE)


def disclosure_line(agent_id: str, fleet: str = "", template: str = DEFAULT_TEMPLATE) -> str:
    return template.format(agent_id=agent_id, fleet=fleet or "-")


def has_ai_disclosure(text: str) -> bool:
    return bool(_DISCLOSED.search(text))


def with_ai_disclosure(
    body: str, *, agent_id: str, fleet: str = "", template: str = DEFAULT_TEMPLATE
) -> str:
    """The body with the disclosure as its first line (unchanged if it already has it)."""
    line = disclosure_line(agent_id, fleet, template)
    if body.startswith(line):
        return body
    return f"{line}\n\n{body}" if body else line
