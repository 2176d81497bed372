"""What a message says: the kind of each of its parts, and the facts it states about its speaker.

Memory care must not read "Do you remember what my dog is called?" as "my dog is called
'called'". So before a message can replace a fact it is read in three steps, all plain rules:

1. **Parts.** The text (its ``"Name: "`` prefix dropped) is cut into sentences, and sentences into
   parts at commas, brackets and joining words ("and", "but", "because", before "if" ...).
   Everything before a retraction ("jk", "just kidding", a closing "not really") is a joke.
2. **Kinds.** Each part is one of :data:`KINDS`, the first rule that applies winning:
   small talk (a greeting or reaction of a few words) is ``other``; a sentence that ends with
   "?" (unless the "?" only ends a tag such as ", remember?"), starts like a question ("what",
   "do you", "is my", "tell me", "remind me") or admits not knowing ("i forgot what ...", "idk")
   is a ``question``; a conditional or wish ("if", "imagine", "i wish", "would", "maybe") is
   ``hypothetical`` ("if" and "imagine" also cover the rest of the sentence); someone else's
   words or beliefs ("my mom says", "everyone assumes", "she was like", a quoted sentence) are a
   ``quote`` (also for the rest of the sentence; "i said" and "like i told you" are the speaker's
   own and state a fact); a "not", "never" or "n't" makes a ``negation``; anything else is a
   ``fact``. For a part that fills a slot (below) only the words before its value count: in "my
   dog is called biscotti not biscuit" the "not" comes after the value.
3. **Slots.** A fact part may give a value to one of the speaker's own slots: "my name is",
   "call me", "i'm 34 years old", "i live in / moved to", "i'm from", "i work as", "i work at /
   got a job at", "my favourite X is", "my birthday (email, hometown, ...) is", and the name of
   something the speaker has ("my dog is called", "my dog's name is", "i have a cat named",
   "i named my dog"). People's names are never slots (people have several sisters and friends),
   nor are someone else's things ("my sister's dog is called Max" is not the speaker's dog). A
   value is the words after the slot up to a word that ends it ("now", "not", "last week", ...);
   a pronoun, a question word or a description ("a big deal") is no value.

A message's kind (:func:`statement_kind`) is ``other`` when all its parts are small talk;
otherwise ``fact`` when one of its parts is a fact (a slot filled as a fact counts even if its
part goes on with a "not"); otherwise ``question`` when all the other parts ask; otherwise the
kind of its first part that neither asks nor is small talk ("nope, never been there. what was
it like?" says something: a negation).
The corpus in ``tests/data/phrasings.toml`` holds the phrasings these rules are checked on.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["fact", "question", "hypothetical", "negation", "quote", "joke", "other"]
KINDS: tuple[Kind, ...] = ("fact", "question", "hypothetical", "negation", "quote", "joke", "other")
MAX_SPEAKER_CHARS = 64
NOT_ASSERTED: frozenset[Kind] = frozenset({"hypothetical", "quote", "joke"})
"""Kinds whose words the speaker does not claim to be true."""


@dataclass(frozen=True, slots=True)
class SlotFact:
    """A value the speaker gives one of their own slots, e.g. ``("live", "lisbon")``."""

    slot: str
    value: str
    words: str
    """The words that state it ("i live in lisbon"), for comparing two statements of one slot."""


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a message, its kind, and the slots it fills as a fact (if any)."""

    text: str
    kind: Kind
    facts: tuple[SlotFact, ...] = ()


# --- words -------------------------------------------------------------------------------


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_PEOPLE = _set(
    "sister brother sibling mom mum mother dad father parent wife husband partner bf gf boyfriend "
    "girlfriend fiance fiancee spouse friend bestie bff son daughter kid child children baby "
    "neighbour neighbor roommate flatmate housemate boss coworker colleague cousin aunt uncle "
    "grandma grandpa grandmother grandfather granny nephew niece family ex teacher landlord "
    "landlady doctor therapist"
)
"""Nouns for people: a name given to one of them is not a slot, a thing of theirs not the speaker's."""

_NOT_A_VALUE = _set(
    "a an some any what whats which who whom whose where when why how it its that this these those "
    "he she they him her them you u me something smth sth anything nothing whatever called named "
    "not no never so too very really kinda sorta back later soon now today tonight tomorrow "
    "yesterday every last next again if on off night nights home weekends times least most first once "
    "all"
)
"""First words that make the rest no value: pronouns, question words, descriptions ("a big deal")."""

_VALUE_ENDS = _set(
    "not instead rather which who that where when because since with from for last next this "
    "yesterday today tomorrow tonight ago starting again now anymore still originally actually "
    "btw lol lmao haha hahaha tho though rn these currently too also right ok okay already "
    "honestly literally anyway though"
)
"""Words that end a slot's value ("lisbon last month", "rex now", "biscotti not biscuit")."""

_FILLER = _set(
    "now currently these those days rn still also actually honestly really just ever of all time "
    "new little old cute big small"
)
"""Words left out of a slot's name ("my fav color these days" is the favourite colour)."""

_SPELLING = {
    "colour": "color",
    "fav": "favourite",
    "fave": "favourite",
    "favorite": "favourite",
    "bday": "birthday",
    "b-day": "birthday",
    "neighbor": "neighbour",
}

# --- parts ---------------------------------------------------------------------------------

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*|[.!?]+")
_PART_BREAK = re.compile(
    r"\s*[,;:()\[\]]\s*|\s+[-\u2013\u2014]+\s+|\s+(?:and|but|because|cause|cuz|coz|though|although|plus|lol|"
    r"lmao|haha+|hehe+)\s+|\s+so\s+(?=(?:i|we|you|he|she|they|it|my|be|please|dont|don't)\b)"
    r"|\s+(?=(?:if|unless)\s)"
)
_RETRACTION = re.compile(
    r"\b(?:jk|j/k|just kidding|just joking|i'm kidding|kidding)\b|/s\b"
    r"|\b(?:not really|lol no|haha no)\W*$"
)
_TRAILING = re.compile(r"[\s.!\U0001f300-\U0001faff\u2600-\u27bf\ufe0f]+$")
"""Full stops, exclamation marks and emoji at the end of a sentence (before them may be a "?")."""
_ASSERTIVE_TAG = re.compile(r"[,\s]+(?:remember|you know|ya know|u know|yk)\W*\?+\W*$")
_SMALL_TALK = re.compile(
    r"^(?:hi|hey|hello|heya|hiya|yo|sup|thanks|thank you|thank u|thx|ty|ok|okay|k|kk|cool|nice|great|"
    r"awesome|sure|yes|yeah|yep|yup|no|nope|nah|lol|lmao|lmfao|rofl|haha\w*|hehe\w*|omg|wow|same|"
    r"good (?:morning|night|evening|afternoon)|gm|gn|night|morning|bye|see (?:you|ya|u)|sounds good|"
    r"sorry|oops|ugh|hmm+|ah+|oh+|aww+|yay|welcome|np|no problem|brb|gtg|g2g|ttyl|bbl|afk|ikr|idc|"
    r"tbh|smh|fr|huh|(?:wait )?(?:what|wut|why|how)\W*$)\b"
)
_WISH = re.compile(
    r"^(?:(?:i )?hope (?:you|u|ur|your)|have a (?:good|great|nice|lovely)|enjoy your|take care|sleep well|"
    r"good luck|happy (?:birthday|new year|holidays))\b"
)
"""Good wishes to the other, of any length: small talk."""
_LEAD = re.compile(
    r"^(?:(?:so|and|but|ok|okay|hey|hi|hello|um+|uh+|hmm+|btw|also|wait|oh|ah|lol|haha\w*|well|yo|"
    r"quick question|random question|question|ps|anyway)(?: there)?[\s,!.]+)+"
)
_QUESTION_START = re.compile(
    r"^(?:(?:what|whats|what's|wat|wut|which|who|whos|who's|whose|whom|why)\b(?! an? )"
    r"|(?:where|when|how)(?:'s|s)?\s+(?:is|are|was|were|do|does|did|am|can|could|would|will|should|"
    r"shall|have|has|old|long|much|many|come|about|often)\b|(?:where|when|how)(?:'s|s)\b"
    r"|(?:do|does|did|dont|don't|doesnt|doesn't|didnt|didn't|can|cant|can't|could|couldnt|couldn't|"
    r"would|wouldnt|wouldn't|will|wont|won't|shall|should|shouldnt|shouldn't|is|isnt|isn't|are|arent|"
    r"aren't|was|wasnt|wasn't|were|werent|weren't|have|havent|haven't|has|hasnt|hasn't|am|may|might)"
    r"\s+(?:i|you|u|ya|we|they|he|she|it|there|this|that|my|your|ur|me|anyone|someone|somebody)\b"
    r"|(?:tell|remind|show) me\b|any (?:idea|tips|advice|thoughts)\b)"
)
_INVERTED_QUESTION = re.compile(
    r"\b(?:(?:what|where|who|how|which|why) (?:would|will|could|should|do|did|can)|would|could|will|can|"
    r"do|did|should) (?:you|u|ya)\b"
)
"""A question inside a part: "if you could be any animal what would you be"."""
_NOT_KNOWING = re.compile(
    r"\b(?:i (?:forgot|forget|can't remember|cant remember|cannot remember|don't remember|"
    r"dont remember|do not remember|don't know|dont know|do not know|have no idea|wonder)|idk|dunno|"
    r"no idea|not sure|wondering)\b"
)
_HYPOTHETICAL = re.compile(
    r"\b(?:if|unless|suppose|supposing|imagine|imagining|pretend|hypothetically|wish|wished|would|"
    r"wouldn't|wouldnt|could|couldn't|couldnt|maybe|perhaps|probably|possibly|might|someday|"
    r"(?<!my )(?<!your )(?<!the )i'?d|you'd|we'd)\b"
)
_CARRIED_HYPOTHETICAL = re.compile(
    r"^(?:if|unless|suppose|supposing|imagine|pretend|what if|hypothetically)\b"
)
_REPORTING = re.compile(
    r"\b(?:says|said|say|saying|tells|told|telling|tell|thinks|thought|think|believes|believed|"
    r"claims|claimed|insists|insisted|assumes|assumed|reckons|wrote|writes|texted|posted|tweeted|"
    r"asked|asks|mentioned|heard)\b|\baccording to\b|\bapparently\b|\bsupposedly\b"
)
_QUOTATIVE = re.compile(r"\b(?:was|is|were|are|am|i'm|im|he's|she's|they're) like\b")
_REPORT_ADVERBS = _set("always keeps kept already just never literally even also still once")
_SELF = _set("i i've i'll me")
_QUOTED = re.compile(r"\"[^\"]+\"|“[^”]+”|«[^»]+»|(?<!\w)'[^']+'(?!\w)")
_NEGATION = re.compile(
    r"\b(?:not|no(?! matter)|never|nope|nah|no longer|none|nobody|nothing|neither|nor|dont|doesnt|didnt|isnt|"
    r"arent|wasnt|werent|wont|cant|couldnt|shouldnt|aint|havent|hasnt|hadnt)\b|n't\b"
)

# --- slots ---------------------------------------------------------------------------------

_V = r"(?P<value>[^,;:.!?()]+)"
_NP = r"(?P<np>(?:\w+ ){0,2}?\w+?)"
_ARTICLE = r"(?:an? |the )?"
_NAMING = r"(?:named|called|renamed|name|call)"
_ADV = r"(?:(?:now|currently|still|actually|just|recently|finally|also) )?"
_SLOTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("name", re.compile(rf"\bmy name(?:'s| is) {_ADV}{_V}")),
    ("name", re.compile(rf"\bi'm called {_V}")),
    ("called", re.compile(rf"\bcall me {_V}")),
    (  # "i'm 34", "i'm 35 years old now"; not "i'm 5 minutes away"
        "age",
        re.compile(
            r"\bi'm (?P<value>\d{1,3})(?: ?(?:years?|yrs?|y/?o)(?: old)?)?"
            r"(?=\W*$|\s*[,;.!?]|\s+(?:now|already|and|but|too|today|lol|haha\w*|btw|tho|yet)\b)"
        ),
    ),
    ("age", re.compile(r"\bi (?:just )?turned (?P<value>\d{1,3})\b")),
    ("age", re.compile(r"\bmy age is (?P<value>\d{1,3})\b")),
    ("live", re.compile(rf"\b(?:i|we) {_ADV}live in {_V}")),
    ("live", re.compile(rf"\b(?:i'm|we're|(?:i|we)'ve {_ADV}been) {_ADV}(?:living|based|staying) in {_V}")),
    ("live", re.compile(rf"\b(?:i|we)(?:'ve| have)? {_ADV}moved to {_V}")),
    ("from", re.compile(rf"\bi'm (?:originally )?from {_V}")),
    ("from", re.compile(rf"\bi (?:originally )?come from {_V}")),
    ("work as", re.compile(rf"\bi {_ADV}work as (?:an? |the )?{_V}")),
    ("work as", re.compile(rf"\bi'm {_ADV}working as (?:an? |the )?{_V}")),
    ("work as", re.compile(r"\bi'm an? (?P<value>(?:\w+ ){0,2}\w+) by (?:profession|trade)")),
    ("work at", re.compile(rf"\bi {_ADV}work (?:at|for) (?:an? |the )?{_V}")),
    ("work at", re.compile(rf"\bi'm {_ADV}working (?:at|for) (?:an? |the )?{_V}")),
    ("work at", re.compile(rf"\bi {_ADV}got (?:a |an |the |my )?(?:new )?job (?:at|with) {_ARTICLE}{_V}")),
    ("favourite", re.compile(rf"\bmy (?:favou?rite|fav|fave) (?P<np>[\w ]+?)(?: is|'s) {_ADV}{_V}")),
    (
        "attribute",
        re.compile(
            r"\bmy (?P<np>birthday|bday|b-day|birth date|date of birth|email|email address|phone number|"
            r"address|hometown|home town|zodiac sign|star sign|blood type|major|username|nickname|"
            rf"surname|last name|first name|middle name|pronouns|shoe size|native language|first language|"
            rf"mother tongue|time zone|timezone)(?:'s| is) {_ADV}{_V}"
        ),
    ),
    ("name of", re.compile(rf"\b(?:my|our) {_NP}(?:'s|s'|s)? name(?:'s| is) {_ADV}{_V}")),
    ("name of", re.compile(rf"\b(?:my|our) {_NP}(?: is|'s|s) {_ADV}(?:called|named) {_V}")),
    (
        "name of",
        re.compile(
            r"\b(?:i|we)(?:'ve| have)? (?:just |recently )?(?:have|got|own|adopted)(?: got)? "
            rf"(?:a |an |one |this )?(?:\w+ )?(?P<np>\w+) (?:called|named) {_V}"
        ),
    ),
    (
        "name of",
        re.compile(rf"\b(?:i|we) (?:just )?(?:re)?(?:named?|call(?:ed)?) (?:my|our) {_NP} (?:to )?{_V}"),
    ),
)
_ANY_SLOT = re.compile("|".join(re.sub(r"\(\?P<\w+>", "(?:", p.pattern) for _, p in _SLOTS))
"""All slot patterns in one, to pass over the many parts that fill none at once."""
_WORD = re.compile(r"\w+(?:['-]\w+)*")
_ORDINAL = re.compile(r"^(\d+)(?:st|nd|rd|th)$")
_LEADING_PREPOSITION = frozenset(["on", "in", "at"])


def split_speaker(text: str) -> tuple[str, str]:
    """A memory's text (``"Name: what was said"``) as its speaker ("" when it has none) and words."""
    name, sep, rest = text.partition(": ")
    if sep and 0 < len(name) <= MAX_SPEAKER_CHARS and "\n" not in name:
        return name, rest
    return "", text


def _normalise(text: str) -> str:
    """Lower case, one kind of apostrophe, "im", "i am", "ive" and "we are" spelled one way."""
    body = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    body = re.sub(r"\bim\b", "i'm", body)
    body = re.sub(r"\bi am\b", "i'm", body)
    body = re.sub(r"\bive\b", "i've", body)
    return re.sub(r"\bwe are\b", "we're", body)


_DROPPED_SUBJECT = (
    (
        re.compile(r"^((?:just |still |now |recently |finally )?)(living|working|staying|based)\b"),
        "i'm \\1\\2",
    ),
    (re.compile(r"^((?:just |still |recently |finally )?)been\b"), r"i've \1been"),
    (re.compile(r"^((?:just |recently |finally )?)(moved|turned|got|started)\b"), r"i \1\2"),
)
"""Chat leaves the "i" out ("just turned 28", "been living in leeds"): put it back for the slots."""


_DROPPED_SUBJECT_STARTS = tuple(
    _set("just still now recently finally living working staying based been moved turned got started")
)


def _with_subject(part: str) -> str:
    if not part.startswith(_DROPPED_SUBJECT_STARTS):
        return part
    for pattern, replacement in _DROPPED_SUBJECT:
        part = pattern.sub(replacement, part, count=1)
    return part


def _words(text: str) -> list[str]:
    return [_SPELLING.get(w, w) for w in _WORD.findall(text)]


def _value(raw: str, slot: str) -> str | None:
    """The value of a slot: its words up to one that ends it; None when it is no value."""
    words: list[str] = []
    for word in _words(raw):
        if word in _VALUE_ENDS:
            break
        words.append(_ORDINAL.sub(r"\1", word))
    if slot == "attribute" and words and words[0] in _LEADING_PREPOSITION:
        words = words[1:]  # "on may 3rd" is "may 3"
    if not words or words[0] in _NOT_A_VALUE or len(words) > 4:
        return None
    return " ".join(words)


def _slot_name(kind: str, np: str | None) -> str | None:
    """The slot's name ("live", "favourite color", "name of dog"); None when it is not the
    speaker's own (a thing of someone else's, or the name of a person)."""
    if np is None:
        return kind
    words = [w for w in _words(np) if w not in _FILLER] or _words(np)
    if not words:
        return None
    if kind == "name of":
        head = words[-1]
        owners = words[:-1]
        if head.removesuffix("s") in _PEOPLE or head in _PEOPLE:
            return None
        if any(w.removesuffix("'s").removesuffix("s") in _PEOPLE or w.endswith("'s") for w in owners):
            return None
        return f"name of {head}"
    if kind == "attribute":
        return " ".join(words)
    return f"{kind} {' '.join(words)}"


def _quoted_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _QUOTED.finditer(text) if len(m.group().split()) >= 3]


def _reports(text: str) -> bool:
    """Whether ``text`` reports someone else's words or beliefs ("my mom says", "he was like")."""
    if _QUOTATIVE.search(text):
        return True
    for match in _REPORTING.finditer(text):
        before = [w for w in _WORD.findall(text[: match.start()]) if w not in _REPORT_ADVERBS]
        subject = before[-1] if before else ""
        if subject in _SELF or (len(before) >= 2 and before[-2:] in (["like", "i"], ["as", "i"])):
            continue  # "i told you", "like i said": the speaker's own words
        if match.group() in ("tell", "say", "think") and subject in ("you", "u", "to", "let"):
            continue  # "can you tell", "i want to say", "let me think"
        return True
    return False


def _asks(text: str) -> bool:
    starts_like_one = _QUESTION_START.match(_LEAD.sub("", text))
    return bool(starts_like_one or _INVERTED_QUESTION.search(text) or _NOT_KNOWING.search(text))


@dataclass(slots=True)
class _Sentence:
    """What holds for the parts of one sentence: whether it asks, and what the parts before
    a part said that covers it too (a conditional, someone else's words)."""

    question: bool
    hypothetical: bool = False
    quote: bool = False


def _kind(text: str, sentence: _Sentence, quoted: bool) -> Kind:
    """The kind of (the start of) a part; the order of the tests is the order of the rules."""
    if sentence.question or _asks(text):
        return "question"
    if sentence.hypothetical or _HYPOTHETICAL.search(text):
        return "hypothetical"
    if sentence.quote or quoted or _reports(text):
        return "quote"
    if _NEGATION.search(text):
        return "negation"
    return "fact"


def _is_small_talk(text: str) -> bool:
    words = _WORD.findall(text)
    return not words or bool(_WISH.match(text)) or (len(words) <= 4 and bool(_SMALL_TALK.match(text)))


def _slot_facts(part: str, sentence: _Sentence, quotes: list[tuple[int, int]], offset: int) -> list[SlotFact]:
    """The slots ``part`` (starting at ``offset`` of its sentence) fills as a fact."""
    text = _with_subject(part)
    if not _ANY_SLOT.search(text):
        return []
    offset -= len(text) - len(part)
    found: list[SlotFact] = []
    for kind, pattern in _SLOTS:
        for match in pattern.finditer(text):
            at = offset + match.start()
            quoted = any(start <= at < end for start, end in quotes)
            if _kind(text[: match.start("value")], sentence, quoted) != "fact":
                continue
            groups = match.groupdict()
            slot = _slot_name(kind, groups.get("np"))
            value = _value(groups["value"], kind) if slot else None
            if slot is None or value is None or any(f.slot == slot for f in found):
                continue
            words = text[match.start() : match.start("value")] + value
            found.append(SlotFact(slot, value, " ".join(words.split())))
    return found


def _sentence_parts(sentence_text: str, *, in_joke: bool) -> list[Part]:
    text = sentence_text.strip()
    if in_joke:
        return [Part(p, "joke") for p in _PART_BREAK.split(text) if p and p.strip(" .!?")]
    tagged = _ASSERTIVE_TAG.search(text)
    if tagged:
        text = text[: tagged.start()]
    bare = _TRAILING.sub("", text)
    sentence = _Sentence(question=bare.endswith("?") or bool(_QUESTION_START.match(_LEAD.sub("", text))))
    quotes = _quoted_spans(text)
    parts: list[Part] = []
    offset = 0
    for piece in _PART_BREAK.split(text):
        start = text.find(piece, offset) if piece else offset
        offset = start + len(piece)
        clean = piece.strip(" .!?")
        if not clean:
            continue
        quoted = any(s <= start < e for s, e in quotes)
        facts = tuple(_slot_facts(piece, sentence, quotes, start))
        if facts:
            kind: Kind = "fact"
        elif _is_small_talk(clean):
            kind = "other"
        else:
            kind = _kind(clean, sentence, quoted)
        parts.append(Part(clean, kind, facts))
        if _CARRIED_HYPOTHETICAL.match(_LEAD.sub("", clean)):
            sentence.hypothetical = True
        if kind == "quote" and not quoted:
            sentence.quote = True
    return parts


@functools.lru_cache(maxsize=4096)
def parts(text: str) -> tuple[Part, ...]:
    """The parts of a message (its speaker's name left out, see :func:`split_speaker`), each
    with its kind. Cached: memory care reads the same nearest memories again and again."""
    body = _normalise(text)
    retractions = list(_RETRACTION.finditer(body))
    joke_end = retractions[-1].end() if retractions else 0
    found: list[Part] = []
    for match in _SENTENCE.finditer(body[:joke_end]):
        found.extend(_sentence_parts(match.group(), in_joke=True))
    for match in _SENTENCE.finditer(body[joke_end:]):
        found.extend(_sentence_parts(match.group(), in_joke=False))
    return tuple(found)


def statement_kind(text: str) -> Kind:
    """The kind of a whole message: see the module docstring."""
    kinds = [part.kind for part in parts(text) if part.kind != "other"]
    if not kinds:
        return "other"
    if "fact" in kinds:
        return "fact"
    return next((kind for kind in kinds if kind != "question"), "question")


def stated_facts(text: str) -> dict[str, SlotFact]:
    """The speaker's own slots a message fills as facts, by slot name (the first one of each)."""
    facts: dict[str, SlotFact] = {}
    for part in parts(text):
        for fact in part.facts:
            facts.setdefault(fact.slot, fact)
    return facts
