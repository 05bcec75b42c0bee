"""Rule-based findings labeler: report text -> coded Findings, deterministic and offline.

The steps, in order:

1. Sections: text under INDICATION / HISTORY / COMPARISON / TECHNIQUE / RECOMMENDATION headers
   is skipped (an indication "rule out pneumothorax" is not a finding); FINDINGS, IMPRESSION,
   and text before any header are read.
2. Sentences: split on sentence punctuation (not decimals or "vs."), blank lines and list items;
   single line breaks inside a sentence (hard-wrapped reports) do not split.
3. Mentions: each finding's patterns (prompts/lexicon/findings.json). Fixed-presence patterns
   ("heart size is normal", "no acute cardiopulmonary process") win over plain mentions of the
   same words. Some patterns are signs of a finding rather than the finding ("blunting of the
   costophrenic angle", "enlarged cardiac silhouette"); "indirect" signs point at a finding
   without being it and never make it more than uncertain ("vascular congestion" for edema: the
   CheXpert labeler counts it as edema, human coders do not; see README).
4. Cues (prompts/lexicon/cues.json), NegEx-style: the nearest cue before a mention in its clause
   (negation, uncertainty, resolution), or a cue right after it ("... cannot be excluded",
   "... has resolved"). Negation reaches across a list ("no consolidation, effusion, or
   pneumothorax") but not past a verb or a clause word ("no effusion, but there is ...").
   Two findings joined by "or"/"versus" are both uncertain. A sign the sentence explains with a
   hedge ("blunting ... may reflect a small effusion") or whose finding it denies ("vascular
   congestion without frank edema") is uncertain, not present.
5. Sides: a mention's own phrase ("left lower lobe atelectasis"), else the words after it ("effusion
   on the left"); coordinated findings share a side stated once ("atelectasis and pneumonia at the
   left base"); support devices take only the quoted device's side.
6. Combine per finding: present beats uncertain beats absent; the evidence is the sentence the
   winning mention is in (at most EVIDENCE_MAX_CHARS characters around the mention, cut on word
   boundaries, when the sentence is longer), with its character span in the input text.

The lexicons are this project's own lists; the CheXpert labeler's phrase lists served only as a
coverage reference.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from prompts.findings import FINDING_NAMES, Finding, Findings

_RANK = {"present": 3, "uncertain": 2, "absent": 1, "not_mentioned": 0}
_NO_LATERALITY = frozenset({"cardiomegaly", "no_acute_finding"})
# in this order: a fixed presence wins over a sign, a sign over a plain mention of the same words
_MENTION_KINDS = ("present", "absent", "uncertain", "sign", "indirect", "mention")
# Evidence is a phrase around the deciding mention, at most this many characters (cut on word
# boundaries): a report without sentence punctuation must not become one long "sentence" of evidence.
EVIDENCE_MAX_CHARS = 160
_WORD = r"[A-Za-z0-9]"

# Section headers: a known name at a line start (or after a full stop) followed by a colon.
_SECTION = re.compile(
    r"(?:^|(?<=\n)|(?<=\.\s)|(?<=\.))[ \t]*(?P<name>final report|findings?|impressions?|conclusions?|"
    r"summary|report|clinical (?:history|indication|information|details|notes?)|indications?|history|"
    r"reason for (?:exam(?:ination)?|study|request)|comparisons?|technique|exam(?:ination)?|"
    r"procedure|recommendations?|notifications?|addendum)[ \t]*:",
    re.IGNORECASE)
_SKIPPED_SECTIONS = ("clinical", "indication", "history", "reason", "comparison", "technique", "exam",
                     "procedure", "recommendation", "notification")

_ABBREVIATIONS = ("vs", "e.g", "i.e", "dr", "mr", "mrs", "ms", "approx", "fig", "resp", "st")
# A sentence ends at . ! ? followed by whitespace, at a blank line, or before a list item.
_SENTENCE_END = re.compile(r"[.!?]+(?=\s)|\n[ \t]*\n|\n(?=[ \t]*(?:[-*\u2022]|\d{1,2}[.)])[ \t])")


@dataclass(frozen=True)
class _Mention:
    finding: str
    start: int            # offsets into the sentence
    end: int
    fixed: str | None     # a fixed presence, else decided by cues
    sign: bool = False    # a sign of the finding ("blunted costophrenic angle"), not the finding itself
    indirect: bool = False  # points at the finding without being it ("vascular congestion"): at most uncertain


@dataclass(frozen=True)
class _Cue:
    kind: str             # "negation" | "uncertain" | "resolution"
    start: int
    end: int


@dataclass(frozen=True)
class _Decision:
    presence: str
    sentence: tuple[int, int]        # span of the evidence sentence in the input text
    order: int                        # position of the mention in the text, for ties
    mention: tuple[int, int]          # span of the mention in the input text
    laterality: str | None
    severity: str | None


def _compile(patterns, flags=re.IGNORECASE) -> re.Pattern:
    """One alternation of lexicon patterns; a space matches any whitespace (reports wrap lines).

    Word patterns get word boundaries at both ends ("no" must not match "nodule"); punctuation
    patterns such as "[;:]" are used as they are.
    """
    parts = []
    for p in sorted(patterns, key=len, reverse=True):   # longest first: "no evidence of" before "no"
        body = p.replace(" ", r"\s+")
        if p[:1].isalnum() or p.startswith("(?:"):
            body = rf"(?<!{_WORD})(?:{body})(?!{_WORD})"
        parts.append(f"(?:{body})")
    return re.compile("|".join(parts), flags)


@dataclass(frozen=True)
class _Lexicon:
    mentions: dict[str, dict[str, re.Pattern]]       # finding -> {"mention"|"absent"|...: pattern}
    exclude_before: dict[str, re.Pattern]
    exclude_after: dict[str, re.Pattern]
    cues: dict[str, re.Pattern]
    severity: dict[str, str]
    severity_re: re.Pattern
    laterality: dict[str, str]
    laterality_re: re.Pattern


@cache
def _lexicon() -> _Lexicon:
    """Load and compile prompts/lexicon/*.json once per process."""
    folder = resources.files("prompts") / "lexicon"
    findings = json.loads((folder / "findings.json").read_text(encoding="utf-8"))
    cues = json.loads((folder / "cues.json").read_text(encoding="utf-8"))
    mentions, before, after = {}, {}, {}
    for name in FINDING_NAMES:
        spec = findings.get(name, {})
        mentions[name] = {kind: _compile(spec[kind]) for kind in _MENTION_KINDS if spec.get(kind)}
        if spec.get("exclude_before"):
            before[name] = re.compile("|".join(p.replace(" ", r"\s+") for p in spec["exclude_before"]),
                                      re.IGNORECASE)
        if spec.get("exclude_after"):
            after[name] = re.compile("|".join(p.replace(" ", r"\s+") for p in spec["exclude_after"]),
                                     re.IGNORECASE)
    cue_kinds = ("negation_pre", "negation_post", "resolution_pre", "resolution_post", "uncertain_pre",
                 "uncertain_post", "pseudo", "terminators", "relative", "scope_breakers", "linking")
    compiled = {kind: _compile(cues[kind]) for kind in cue_kinds}
    sev = {k.lower(): v for k, v in cues["severity"].items()}
    lat = {k.lower(): v for k, v in cues["laterality"].items()}
    return _Lexicon(mentions, before, after, compiled, sev, _compile(list(sev)), lat, _compile(list(lat)))


# ---------------------------------------------------------------- sections and sentences

def _regions(text: str) -> list[tuple[int, int]]:
    """Character ranges of the text to read: everything except skipped sections."""
    headers = list(_SECTION.finditer(text))
    if not headers:
        return [(0, len(text))]
    regions = [(0, headers[0].start())]
    for i, h in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        if not h["name"].lower().startswith(_SKIPPED_SECTIONS):
            regions.append((h.end(), end))
    return [r for r in regions if r[1] > r[0]]


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentence spans in text[start:end], stripped of surrounding whitespace."""
    spans, cut = [], start
    for m in _SENTENCE_END.finditer(text, start, end):
        if m.group().startswith("."):
            word = re.search(r"([A-Za-z.]+)$", text[cut:m.start()])
            if word and word.group(1).lower().rstrip(".") in _ABBREVIATIONS:
                continue
        spans.append((cut, m.end()))
        cut = m.end()
    spans.append((cut, end))
    out = []
    for a, b in spans:
        piece = text[a:b]
        lead = len(piece) - len(piece.lstrip())
        trail = len(piece) - len(piece.rstrip())
        if b - trail > a + lead:
            out.append((a + lead, b - trail))
    return out


# ---------------------------------------------------------------- one sentence

def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _find_mentions(s: str, lex: _Lexicon) -> list[_Mention]:
    found: list[_Mention] = []
    for name in FINDING_NAMES:
        pats = lex.mentions[name]
        taken: list[tuple[int, int]] = []
        for kind in _MENTION_KINDS:
            if kind not in pats:
                continue
            for m in pats[kind].finditer(s):
                span = (m.start(), m.end())
                if any(_overlaps(span, t) for t in taken):
                    continue
                if name in lex.exclude_before and lex.exclude_before[name].search(s[max(0, m.start() - 40):m.start()]):
                    continue
                if name in lex.exclude_after and lex.exclude_after[name].match(s[m.end():m.end() + 40]):
                    continue
                taken.append(span)
                fixed = None if kind in ("sign", "indirect", "mention") else kind
                found.append(_Mention(name, m.start(), m.end(), fixed, kind in ("sign", "indirect"),
                                      kind == "indirect"))
    return sorted(found, key=lambda x: (x.start, x.end))


def _find_cues(s: str, lex: _Lexicon) -> tuple[list[_Cue], list[_Cue]]:
    """Pre and post cues in a sentence, with pseudo-cues and negations inside uncertainty removed."""
    c = lex.cues
    masked = [(m.start(), m.end()) for m in c["pseudo"].finditer(s)]
    unc_pre = [(m.start(), m.end()) for m in c["uncertain_pre"].finditer(s)]
    unc_post = [(m.start(), m.end()) for m in c["uncertain_post"].finditer(s)]
    shield = masked + unc_pre + unc_post      # "cannot be excluded" is not a negation

    def keep(spans, kind, blockers):
        return [_Cue(kind, a, b) for a, b in spans if not any(_overlaps((a, b), x) for x in blockers)]

    def spans(kind):
        return [(m.start(), m.end()) for m in c[kind].finditer(s)]

    pre = (keep(unc_pre, "uncertain", masked)
           + keep(spans("resolution_pre"), "resolution", masked + unc_pre)
           + keep(spans("negation_pre"), "negation", shield + spans("resolution_pre")))
    post = (keep(unc_post, "uncertain", masked)
            + keep(spans("resolution_post"), "resolution", masked + unc_post)
            + keep(spans("negation_post"), "negation", shield + spans("resolution_post")))
    return pre, post


def _boundaries(s: str, lex: _Lexicon, kinds: tuple[str, ...]) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for k in kinds for m in lex.cues[k].finditer(s)]


def _classify(s: str, mention: _Mention, mentions: list[_Mention], pre: list[_Cue], post: list[_Cue],
              lex: _Lexicon) -> str:
    if mention.fixed:
        return mention.fixed
    # ---- the nearest cue before the mention (or inside it: "heart is not enlarged")
    hard = _boundaries(s, lex, ("terminators",))
    soft = _boundaries(s, lex, ("relative",))
    breakers = _boundaries(s, lex, ("scope_breakers",))
    best: _Cue | None = None
    for cue in pre:
        if cue.end > mention.end:
            continue
        gap = (cue.end, mention.start)
        if any(gap[0] <= b[0] and b[1] <= gap[1] for b in hard + soft):
            continue
        if cue.kind == "negation" and any(gap[0] <= b[0] and b[1] <= gap[1] for b in breakers):
            continue
        # another fixed statement in between ("no acute process; heart ...") closes the scope too
        if any(gap[0] <= m.start and m.end <= gap[1] and m.fixed for m in mentions):
            continue
        if best is None or cue.end > best.end:
            best = cue
    # ---- a cue just after the mention ("... has resolved", "... cannot be excluded")
    after: _Cue | None = None
    for cue in sorted(post, key=lambda c: c.start):
        if cue.start < mention.end:
            continue
        gap = (mention.end, cue.start)
        if any(gap[0] <= b[0] and b[1] <= gap[1] for b in hard):
            break
        if _post_reaches(s, gap, mentions):
            after = cue
        break
    if after is not None and after.kind == "uncertain":
        return "uncertain"
    if after is not None:
        return "absent"
    # "no focal opacity concerning for pneumonia": a negation before a linking cue negates what
    # the link points at too
    links = [(m.start(), m.end()) for m in lex.cues["linking"].finditer(s, 0, mention.start)]
    for a, b in links:
        if (best is not None and best.end > b) or any(b <= x[0] and x[1] <= mention.start for x in hard + soft):
            continue
        for cue in pre:
            gap = (cue.end, a)
            if (cue.kind == "negation" and cue.end <= a
                    and not any(gap[0] <= x[0] and x[1] <= gap[1] for x in hard + soft + breakers)
                    and (best is None or best.kind == "uncertain" or best.end <= cue.end)):
                return "absent"
    if best is None:
        return "present"
    return {"negation": "absent", "resolution": "absent", "uncertain": "uncertain"}[best.kind]


_FILLER = re.compile(r"(?<![A-Za-z])(?:or|and|nor|and/or|the|a|an|any|of|is|are|was|were|has|have|had|been|"
                     r"previously|seen|noted|described|now|also|again|small|large|tiny|trace|mild|moderate|"
                     r"left|right|bilateral|apical|basilar|lower|upper|middle|lobe|lung|base|bases|"
                     r"on|in|at|to|from|prior|previous|earlier|known)(?![A-Za-z])", re.IGNORECASE)


def _post_reaches(s: str, gap: tuple[int, int], mentions: list[_Mention]) -> bool:
    """Whether a cue after `gap` still speaks about the mention before it."""
    text = list(s[gap[0]:gap[1]])
    for m in mentions:              # other findings in a list before the cue: "effusion or atelectasis"
        if gap[0] <= m.start and m.end <= gap[1]:
            for i in range(m.start - gap[0], m.end - gap[0]):
                text[i] = " "
    rest = _FILLER.sub(" ", "".join(text))
    words = re.findall(r"[A-Za-z0-9]+", rest)
    if "," in rest:
        return len(words) == 0
    return len(words) <= 3


_ALTERNATIVE_AFTER = re.compile(r"\s*,?\s*(?:or|versus|vs\.?|and/or)\s+(?!no\b|not\b|without\b)[A-Za-z]",
                                re.IGNORECASE)
_ALTERNATIVE_BEFORE = re.compile(r"(?:^|[^A-Za-z])(?:or|versus|vs\.?|and/or)\s+(?:[A-Za-z-]+\s+){0,3}$", re.IGNORECASE)


def _alternatives(s: str, mentions: list[_Mention]) -> set[int]:
    """Indices of mentions offered as one of alternatives ("atelectasis or pneumonia",
    "edema versus infection", "effusion or pleural thickening"): not more than uncertain.

    Only ever turns "present" into "uncertain": in "no effusion or pneumothorax" the negation
    has already decided.
    """
    hits: set[int] = set()
    for i, m in enumerate(mentions):
        if m.fixed:
            continue
        prev_end = max([x.end for x in mentions if x.end <= m.start] + [0])
        if _ALTERNATIVE_AFTER.match(s, m.end) or _ALTERNATIVE_BEFORE.search(s[prev_end:m.start]):
            hits.add(i)
    return hits


_EXPLANATION_FILLER = re.compile(r"(?<![A-Za-z])(?:which|that|this|these|it|findings?|appearance|and|is|are|"
                                  r"most|in|at|the|left|right|base|bases|side)(?![A-Za-z])", re.IGNORECASE)


def _hedged_sign(s: str, sign: _Mention, mentions: list[_Mention], pre: list[_Cue], lex: _Lexicon) -> bool:
    """Whether an uncertainty cue right after a sign explains it: "blunting of the left costophrenic
    angle may reflect a small effusion", "vascular congestion, which could be due to ..."."""
    hedge = min((c for c in pre if c.kind == "uncertain" and c.start >= sign.end), key=lambda c: c.start,
                default=None)
    if hedge is None:
        return False
    gap = (sign.end, hedge.start)
    if any(gap[0] <= m.start and m.end <= gap[1] for m in mentions):
        return False            # "blunted angle and opacity, likely atelectasis": the hedge is about the opacity
    if any(gap[0] <= b[0] and b[1] <= gap[1] for b in _boundaries(s, lex, ("terminators",))):
        return False
    return len(re.findall(r"[A-Za-z0-9]+", _EXPLANATION_FILLER.sub(" ", s[gap[0]:gap[1]]))) <= 2


def _uncertain_signs(s: str, mentions: list[_Mention], presences: list[str], pre: list[_Cue],
                     lex: _Lexicon) -> list[str]:
    """Signs read as present become uncertain when hedged (`_hedged_sign`) or when the same sentence
    denies the finding they stand for: "vascular congestion without frank edema" (congestion seen,
    edema not) is neither a present nor an absent edema."""
    out = list(presences)
    for i, m in enumerate(mentions):
        if not m.sign or presences[i] != "present":
            continue
        denied = any(x.finding == m.finding and not x.sign and presences[j] == "absent"
                     for j, x in enumerate(mentions))
        if denied or _hedged_sign(s, m, mentions, pre, lex):
            out[i] = "uncertain"
    return out


_CHANGE_AFTER = re.compile(r"\s+(?:interval\s+)?(?:improved|improving|increased|increasing|decreased|decreasing|"
                           r"worsened|worsening|changed|smaller|larger|better|worse|increase|decrease|"
                           r"improvement|progression|change)(?![A-Za-z])", re.IGNORECASE)


def _severity_word(s: str, m: re.Match, lex: _Lexicon) -> str | None:
    if _CHANGE_AFTER.match(s, m.end()):
        return None          # "markedly improved edema" says how it changed, not how severe it is
    return lex.severity[re.sub(r"\s+", " ", m.group().lower())]


def _severity(s: str, mention: _Mention, window_start: int, lex: _Lexicon) -> str | None:
    candidates = list(lex.severity_re.finditer(s, mention.start, mention.end))[::-1]
    candidates += list(lex.severity_re.finditer(s, max(window_start, mention.start - 40), mention.start))[::-1]
    for m in candidates:
        word = _severity_word(s, m, lex)
        if word:
            return word
    # "the effusion is small", "effusion, now moderate in size"
    m = re.match(r"\s*,?\s*(?:(?:is|are|remains?|appears?|now|still|again)\s+){0,3}", s[mention.end:],
                 re.IGNORECASE)
    sev = lex.severity_re.match(s, mention.end + m.end())
    return _severity_word(s, sev, lex) if sev else None


def _laterality(s: str, mention: _Mention, window: tuple[int, int], lex: _Lexicon) -> tuple[str | None, str]:
    """The side of one mention and where it was read: "own" (its own phrase, up to the mention's
    end: "left lower lobe atelectasis") or "after" ("pneumonia at the left base")."""
    if mention.finding in _NO_LATERALITY:
        return None, "own"
    sides: list[str] = []
    source = "own"
    # the side words in this mention's own phrase: after the last comma or "with" before it
    # ("atelectasis, left greater than right, and a small right effusion" -> right)
    start = max(window[0], mention.start - 50)
    cuts = list(re.finditer(r"[,;]|(?<![A-Za-z])with(?![A-Za-z])", s[start:mention.start], re.IGNORECASE))
    if cuts:
        start += cuts[-1].end()
    for m in lex.laterality_re.finditer(s, start, mention.end):
        sides.append(lex.laterality[re.sub(r"\s+", " ", m.group().lower())])
    if not sides:
        # "effusion on the left", "nodule is suspected in the right mid lung"; stop where another
        # phrase begins ("effusion with right lower lobe atelectasis")
        after = re.split(r"(?<![A-Za-z])(?:with|and|but|plus)(?![A-Za-z])|[,;]", s[mention.end:window[1]],
                         maxsplit=1, flags=re.IGNORECASE)[0]
        words = re.findall(r"\S+", after)[:7]
        side = lex.laterality_re.search(" ".join(words))
        if side:
            sides.append(lex.laterality[re.sub(r"\s+", " ", side.group().lower())])
            source = "after"
    if not sides:
        return None, source
    if "bilateral" in sides or ("left" in sides and "right" in sides):
        return "bilateral", source
    return sides[-1], source


# Between two coordinated findings: commas, "and", "or", "and/or", "versus", "/" and at most two
# describing words ("left lower lobe atelectasis and patchy pneumonia").
_COORDINATED = re.compile(r"[\s,/]*(?:(?:and/or|and|or|versus|vs\.?)[\s,]+)?(?:[A-Za-z-]+\s+){0,2}", re.IGNORECASE)


def _shared_sides(s: str, mentions: list[_Mention], presences: list[str], sides: list[str | None],
                  sources: list[str], lex: _Lexicon) -> list[str | None]:
    """Coordinated findings share a side stated once for all of them: a side before the first
    ("left lower lobe atelectasis and pneumonia") carries forward, one after the last ("atelectasis
    and pneumonia at the left base") carries back. A finding with its own side keeps it."""
    out = list(sides)
    chain: list[int] = []
    chains: list[list[int]] = []
    for i, m in enumerate(mentions):
        lateral = m.finding not in _NO_LATERALITY and presences[i] in ("present", "uncertain")
        if not lateral:
            if chain:
                chains.append(chain)
            chain = []
            continue
        if chain:
            prev = mentions[chain[-1]]
            gap = s[prev.end:m.start] if m.start >= prev.end else ""
            joined = _COORDINATED.fullmatch(gap) is not None and not lex.laterality_re.search(gap) \
                and not lex.cues["scope_breakers"].search(gap) and not lex.cues["terminators"].search(gap)
            if not joined:
                chains.append(chain)
                chain = []
        chain.append(i)
    if chain:
        chains.append(chain)
    for chain in chains:
        carry = None
        for i in chain:                                  # forward, from a side in the own phrase
            if out[i] is not None:
                carry = out[i] if sources[i] == "own" else None
            elif carry is not None:
                out[i] = carry
        carry = None
        for i in reversed(chain):                        # backward, from a side read after the last
            if sides[i] is not None:
                carry = sides[i] if sources[i] == "after" else None
            elif carry is not None and out[i] is None:
                out[i] = carry
    return out


def _read_sentence(text: str, a: int, b: int, lex: _Lexicon, order0: int):
    s = text[a:b]
    mentions = _find_mentions(s, lex)
    if not mentions:
        return []
    pre, post = _find_cues(s, lex)
    alternatives = _alternatives(s, mentions)
    hard = _boundaries(s, lex, ("terminators", "relative"))
    presences = _uncertain_signs(s, mentions, [_classify(s, m, mentions, pre, post, lex) for m in mentions], pre, lex)
    severities: list[str | None] = []
    sides: list[str | None] = []
    sources: list[str] = []
    for i, m in enumerate(mentions):
        if presences[i] == "present" and (i in alternatives or s.rstrip().endswith("?") or m.indirect):
            presences[i] = "uncertain"  # "atelectasis or pneumonia", "new right effusion?", "vascular congestion"
        lat = sev = None
        source = "own"
        if presences[i] in ("present", "uncertain"):
            prev_end = max([x.end for x in mentions if x.end <= m.start and x.finding != m.finding]
                           + [b2 for _, b2 in hard if b2 <= m.start] + [0])
            next_start = min([x.start for x in mentions if x.start >= m.end] + [len(s)])
            sev = _severity(s, m, prev_end, lex)
            lat, source = _laterality(s, m, (prev_end, next_start), lex)
            if lat is None and m.finding not in _NO_LATERALITY and i > 0:
                lat = _explained_side(s, mentions[i - 1], m, presences[i - 1], sides[i - 1], pre, lex)
        severities.append(sev)
        sides.append(lat)
        sources.append(source)
    sides = _shared_sides(s, mentions, presences, sides, sources, lex)
    return [(m.finding, _Decision(presences[i], (a, b), order0 + m.start, (a + m.start, a + m.end), sides[i],
                                  severities[i]))
            for i, m in enumerate(mentions)]


def _explained_side(s: str, before: _Mention, mention: _Mention, before_presence: str, before_side: str | None,
                    pre: list[_Cue], lex: _Lexicon) -> str | None:
    """The side of the finding a mention explains: "left basilar opacity may reflect layering pleural
    fluid" (the fluid is on the left), "right hilar opacity, concerning for pneumonia"."""
    gap = (before.end, mention.start)
    links = [(c.start, c.end) for c in pre if c.kind == "uncertain"] + _boundaries(s, lex, ("linking",))
    if not any(gap[0] <= x[0] and x[1] <= gap[1] for x in links):
        return None
    if any(gap[0] <= x[0] and x[1] <= gap[1] for x in _boundaries(s, lex, ("terminators",))):
        return None
    return before_side if before_presence in ("present", "uncertain") else None


# ---------------------------------------------------------------- combine

def _phrase(text: str, sentence: tuple[int, int], mention: tuple[int, int],
            limit: int = EVIDENCE_MAX_CHARS) -> tuple[int, int]:
    """The evidence span: the sentence, or where it is longer than `limit`, at most `limit`
    characters of it around the mention, cut on word boundaries (the mention itself is kept)."""
    a, b = sentence
    if b - a <= limit:
        return a, b
    m0, m1 = mention
    room = max(0, limit - (m1 - m0))
    lo = max(a, m0 - room // 2)
    hi = min(b, lo + max(limit, m1 - m0))
    lo = max(a, min(lo, hi - limit))                    # near the sentence end: use the room before
    if lo > a and text[lo - 1].isalnum() and text[lo].isalnum():
        nxt = re.search(r"\s", text[lo:m0])          # start at the next word
        lo = lo + nxt.end() if nxt else lo
    if hi < b and text[hi - 1].isalnum() and text[hi].isalnum():
        cut = max(text.rfind(" ", m1, hi), text.rfind("\n", m1, hi))
        hi = cut if cut > m1 else hi
    while lo < m0 and text[lo].isspace():
        lo += 1
    while hi > m1 and text[hi - 1].isspace():
        hi -= 1
    return lo, hi


def _combine(name: str, decisions: list[_Decision], text: str) -> Finding:
    if not decisions:
        return Finding(name)
    top = max(_RANK[d.presence] for d in decisions)
    winners = sorted((d for d in decisions if _RANK[d.presence] == top), key=lambda d: d.order)
    first = winners[0]
    if name == "support_devices":
        # devices are different objects: the side is the quoted device's, never another line's
        laterality = first.laterality
    else:
        sides = {d.laterality for d in winners if d.laterality}
        if "bilateral" in sides or {"left", "right"} <= sides:
            laterality = "bilateral"
        else:
            laterality = first.laterality or (sides.pop() if sides else None)
    severity = first.severity or next((d.severity for d in winners if d.severity), None)
    a, b = _phrase(text, first.sentence, first.mention)
    return Finding(name=name, presence=first.presence, evidence=text[a:b], span=(a, b),
                   laterality=laterality, severity=severity)


def extract_findings(text: str) -> Findings:
    """Read coded findings out of a chest radiograph report.

    Parameters
    ----------
    text : str
        The report (free text; FINDINGS/IMPRESSION headers optional). Indication, history,
        comparison and technique sections are not read.

    Returns
    -------
    Findings
        One Finding per name in FINDING_NAMES, in that order. For a mentioned finding:
        presence ("present" beats "uncertain" beats "absent" across sentences), the sentence it
        rests on as `evidence` (a phrase of at most EVIDENCE_MAX_CHARS characters around the
        mention when the sentence is longer, cut on word boundaries) with
        `text[span[0]:span[1]] == evidence`, and laterality and severity when the report states
        them (present or uncertain findings only).

    Raises
    ------
    TypeError
        When `text` is not a str (e.g. bytes: decode it first).
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_findings needs the report as str, got {type(text).__name__}; "
                        f"decode bytes first (e.g. data.decode('utf-8'))")
    lex = _lexicon()
    per: dict[str, list[_Decision]] = {name: [] for name in FINDING_NAMES}
    for start, end in _regions(text):
        for a, b in _sentences(text, start, end):
            for name, decision in _read_sentence(text, a, b, lex, a):
                per[name].append(decision)
    return Findings(tuple(_combine(name, per[name], text) for name in FINDING_NAMES))
