"""Make free text from the EHR safe to place inside a Llama 2 chat prompt.

Context text (reason for the exam, condition names, a clinician's question) comes from outside
and is written into the user turn. It must not be able to close the user turn, open a system
block, add a second image, or smuggle in layout (newlines) that reads like an instruction. The
role markers of the other common chat formats (``USER:``/``ASSISTANT:``, ``### Human:``, ChatML's
``<|im_start|>``, ``<|user|>``, ...) go the same way: a model fine-tuned from a chat model has seen
them as turn boundaries.
"""
from __future__ import annotations

import re
import unicodedata

MAX_FIELD_CHARS = 200       # per context field (reason, one condition, care setting)
MAX_CONDITIONS = 10
MAX_QUESTION_CHARS = 500

# Chat-format tokens of the Llama 2 template, tolerant of case and of spaces inside the
# brackets ("[ / inst ]", "< < SYS > >", "< / s >"): a tokenizer may not parse the spaced
# forms as special, but a model has seen them as markup, so they go too.
_CHAT_TOKENS = re.compile(
    r"\[\s*/?\s*inst\s*\]"                 # [INST], [/INST]
    r"|<\s*<\s*/?\s*sys\s*>\s*>"           # <<SYS>>, <</SYS>>
    r"|<\s*/?\s*s\s*>"                     # <s>, </s>
    r"|<\s*/?\s*image\s*>"                 # <image> (the one image slot belongs to the template)
    r"|<\s*/?\s*(?:unk|pad)\s*>"           # the tokenizer's other special tokens
    # other chat formats' markup: ChatML and Phi/Zephyr/Llama 3 special tokens (<|im_start|>, <|user|>,
    # <|eot_id|>, ...), Gemma's turn tokens, Alpaca/Vicuna headers ("### Human:", "### Instruction:")
    r"|<\s*\|[^|<>]{0,40}\|\s*>"
    r"|<\s*/?\s*(?:start|end)_of_turn\s*>"
    r"|\#{1,6}\s*(?:human|assistant|user|system|instruction|response|input|bot|gpt)\s*:"
    # Vicuna/LLaVA role prefixes ("USER:", "ASSISTANT:"), any case; "system:" only where it does not end
    # a clinical phrase ("respiratory system: ..." stays)
    r"|(?:user|assistant|human|gpt)\s*:"
    r"|(?<![a-z] )system\s*:",
    re.IGNORECASE,
)
_WHITESPACE = re.compile(r"\s+")


def _drop_invisible(text: str) -> str:
    # Cc = control characters (incl. \x00, \x1b, DEL, C1); Cf = format characters (zero-width
    # space/joiners, bidi overrides) that can hide a token from a human reviewer.
    # Tabs and line breaks become spaces (collapsed below) rather than vanishing.
    out = []
    for ch in text:
        if ch in "\t\n\r\v\f\x85\u2028\u2029":
            out.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"):
            out.append(ch)
    return "".join(out)


def sanitize_text(text: str | None, max_chars: int = MAX_FIELD_CHARS) -> str:
    """Return `text` safe for a prompt: one line, no control or chat-format tokens, capped.

    Parameters
    ----------
    text : str or None
        Free text from outside the service (FHIR display text, a question).
    max_chars : int
        Length cap in characters after cleaning; longer text is cut at a word boundary
        when one is near, and ends with "...".

    Returns
    -------
    str
        The cleaned text; "" when nothing meaningful is left.
    """
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", str(text))   # full-width "＜ｓ＞" -> "<s>" before matching
    text = _drop_invisible(text)
    text = _WHITESPACE.sub(" ", text)                 # one space between words: the "system:" rule reads it
    # Removing one token can join its neighbours into a new one ("<ima<image>ge>"), so repeat
    # until nothing changes; each pass shortens the text, so this ends.
    while True:
        cleaned = _CHAT_TOKENS.sub(" ", text)
        if cleaned == text:
            break
        text = cleaned
    text = _WHITESPACE.sub(" ", text).strip()
    if len(text) > max_chars:
        cut = text[: max_chars - 3]
        space = cut.rfind(" ")
        if space >= max_chars // 2:
            cut = cut[:space]
        text = cut.rstrip(" ,;:") + "..."
    return text


def sanitize_conditions(conditions, max_items: int = MAX_CONDITIONS,
                        max_chars: int = MAX_FIELD_CHARS) -> tuple[str, ...]:
    """Clean each condition name, drop empties and repeats (case-insensitive), keep the first `max_items`."""
    seen: set[str] = set()
    out: list[str] = []
    for c in conditions or ():
        s = sanitize_text(c, max_chars)
        if s and s.casefold() not in seen:
            seen.add(s.casefold())
            out.append(s)
        if len(out) == max_items:
            break
    return tuple(out)
