"""Chat-template control tokens, stripped from every turn before it reaches the fallback.

llama.cpp renders the template to text and tokenizes it with special tokens parsed, so one of these inside
user text would open a forged system or assistant turn.
"""

from __future__ import annotations

import re

_CONTROL_TOKENS = re.compile(
    r"<\|[^|<>\s]{1,64}\|>"  # ChatML, Llama 3, Phi: <|im_start|>, <|eot_id|>, <|start_header_id|>, ...
    "|<\uff5c[^\uff5c<>\\s]{1,64}\uff5c>"  # DeepSeek's, between fullwidth vertical bars (U+FF5C)
    r"|</?s>|\[/?INST\]|<</?SYS>>"  # Llama 2, Mistral
    r"|\[/?(?:SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS)\]"  # Mistral v3 and later
    r"|<(?:start_of_turn|end_of_turn|bos|eos)>",  # Gemma
    re.IGNORECASE,
)


def strip_control_tokens(text: str) -> str:
    """`text` without chat-template control tokens; repeated, so removing one cannot join a new one."""
    while True:
        cleaned = _CONTROL_TOKENS.sub("", text)
        if cleaned == text:
            return cleaned
        text = cleaned
