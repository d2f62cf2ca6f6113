"""Built-in synthetic sample corpus with planted ground truth.

``generate`` builds a deterministic, made-up pretraining corpus in memory and
``write_sample`` writes it as zstd Parquet shards plus a ground-truth table.
Every word list, sentence template and grammar below was written for this
module; nothing is loaded from outside. The same ``seed`` always produces
byte-identical ids and texts (only ``random.Random`` with explicit seeds is
used; nothing depends on ``hash()`` or set iteration order).

Document kinds (``kind`` column) and the hint written to ``expected_flags``:

============  ==================  ================================================
kind          expected_flags      what it is
============  ==================  ================================================
prose         ``''``              clean multi-paragraph expository English
web           ``boilerplate``     prose wrapped in menus, cookie banners, footers
spam          ``spam``            keyword lists, repeated lines and paragraphs
code          ``code``            Python / JavaScript / C source files
math          ``math``            LaTeX-ish worked exercises with real numbers
non_english   ``non_english``     de, fr, es, ru (Cyrillic), zh, ja (no spaces)
offensive     ``offensive``       forum-style prose with a few swear words
short         ``short``           1-10 words
empty         ``empty``           ``''`` or null text
long          ``long``            prose of at least ``LONG_DOC_MIN_CHARS`` chars
============  ==================  ================================================

Planted duplicates copy their source's ``kind``, ``lang`` and
``expected_flags``; ``truth`` records ``dup_group`` (shared by the original
and all its copies), ``dup_type`` (``exact``/``near``, null for the original)
and ``source_id`` (the original's id, for copies only). Clean documents have
``expected_flags == ''``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from fractions import Fraction
from random import Random
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

# ---------------------------------------------------------------------------
# Mix (fractions of n_docs). Originals take MIX; copies take the dup fractions.
# ---------------------------------------------------------------------------
MIX: dict[str, float] = {
    "prose": 0.45,
    "web": 0.08,
    "spam": 0.06,
    "code": 0.05,
    "math": 0.03,
    "non_english": 0.08,
    "offensive": 0.03,
    "tiny": 0.04,  # split into short / empty / null / long below
}
EXACT_DUP_FRACTION = 0.10
NEAR_DUP_FRACTION = 0.08
LONG_DOC_FRACTION = 0.0008      # 4 docs per 5000
LONG_DOC_MIN_CHARS = 200_000
EMPTY_DOC_FRACTION = 0.001      # '' texts, 5 per 5000
NULL_DOCS = 2                   # null texts (when n_docs >= 100)
NEAR_EDIT_RATE = (0.01, 0.15)   # fraction of words touched by a near copy
PROSE_PARAGRAPHS = (3, 15)
NON_ENGLISH_LANGS = ("de", "fr", "es", "ru", "zh", "ja")

KINDS = ("prose", "web", "spam", "code", "math", "non_english", "offensive",
         "short", "empty", "long")
FLAGS = {
    "prose": "", "web": "boilerplate", "spam": "spam", "code": "code",
    "math": "math", "non_english": "non_english", "offensive": "offensive",
    "short": "short", "empty": "empty", "long": "long",
}
# kinds whose documents may be copied with edits (enough words for shingles)
NEAR_SOURCE_KINDS = ("prose", "web", "spam", "code", "math", "non_english", "offensive")

DOCS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.string()),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("lang", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=False),
])
TRUTH_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("dup_group", pa.string()),
    pa.field("dup_type", pa.string()),
    pa.field("source_id", pa.string()),
    pa.field("expected_flags", pa.string(), nullable=False),
])

_TOKEN = re.compile(r"\{(\w+)\}|\[([^\]]*)\]")
_A_AN = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def _w(s: str) -> tuple[str, ...]:
    return tuple(s.split())


def _c(s: str) -> tuple[str, ...]:
    """Comma-separated list (entries may contain spaces)."""
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _compile(templates) -> tuple:
    """Pre-split templates into (literal, slot, literal, slot, ..., literal).

    A slot is a name (``{N}``, looked up in the fill table) or a tuple of
    literal alternatives (``[a|b|c]``)."""
    out = []
    for t in templates:
        pieces: list = []
        pos = 0
        for m in _TOKEN.finditer(t):
            pieces.append(t[pos:m.start()])
            pieces.append(m.group(1) if m.group(1) else tuple(m.group(2).split("|")))
            pos = m.end()
        pieces.append(t[pos:])
        out.append(tuple(pieces))
    return tuple(out)


def _plural(noun: str) -> str:
    head, _, last = noun.rpartition(" ")
    if last.endswith("y") and last[-2:-1] not in "aeiou":
        p = last[:-1] + "ies"
    elif last.endswith(("s", "x", "ch", "sh", "z")):
        p = last + "es"
    else:
        p = last + "s"
    return (head + " " + p) if head else p


# ---------------------------------------------------------------------------
# English topics: name, experts, nouns, adjectives, transitive verbs (3sg).
# ---------------------------------------------------------------------------
_TOPIC_SPECS = [
    ("Astronomy", "astronomers",
     "star planet comet galaxy nebula telescope orbit moon asteroid eclipse observatory spectrum supernova cluster meteor constellation satellite atmosphere",
     "distant bright faint stellar lunar orbital massive luminous frozen rotating",
     "orbits reflects emits absorbs obscures outshines surrounds illuminates distorts attracts"),
    ("Cooking", "cooks",
     "sauce oven recipe onion broth pastry skillet spice dough kitchen garlic marinade stew loaf knife flavor vegetable butter",
     "savory crisp tender fragrant spicy roasted golden creamy bitter rustic",
     "thickens seasons softens flavors coats balances sweetens absorbs enriches complements"),
    ("Ancient History", "historians",
     "empire dynasty treaty kingdom chronicle monarch fortress province rebellion manuscript temple colony republic senate army coin harbor garrison",
     "ancient imperial medieval rival coastal powerful forgotten royal fortified wealthy",
     "controls describes threatens replaces protects documents rivals outlasts governs unites"),
    ("Medicine", "physicians",
     "patient vaccine symptom diagnosis infection therapy clinic antibiotic tissue surgeon fever dose hospital nerve organ virus treatment remedy",
     "chronic acute clinical mild severe preventive common sterile surgical effective",
     "prevents treats reduces triggers relieves damages targets weakens protects monitors"),
    ("Rivers", "hydrologists",
     "river delta floodplain tributary current estuary channel bank basin meander reservoir dam sediment waterfall valley rapid stream watershed",
     "shallow muddy seasonal swift broad winding navigable fertile fresh braided",
     "carries deposits erodes floods feeds drains shapes crosses nourishes joins"),
    ("Programming Languages", "programmers",
     "compiler interpreter syntax variable function library module parser runtime keyword loop closure exception thread macro debugger standard type_checker",
     "dynamic static compiled functional verbose concise strict expressive portable lazy",
     "compiles parses optimizes executes imports defines checks replaces extends simplifies"),
    ("Economics", "economists",
     "market price wage inflation currency tariff budget loan bank deficit supply demand investment export household recession tax interest_rate",
     "fiscal monetary global domestic rising stable competitive regional seasonal volatile",
     "raises lowers affects stabilizes finances replaces drives restricts encourages offsets"),
    ("Geology", "geologists",
     "rock mineral fault volcano crystal layer sediment fossil glacier magma crust quarry canyon cave granite sandstone earthquake plateau",
     "volcanic sedimentary igneous ancient porous layered molten brittle dense weathered",
     "erodes compresses forms buries exposes fractures cools covers reshapes lifts"),
    ("Botany", "botanists",
     "seed leaf root flower stem pollen orchard shrub fern moss vine seedling bark blossom meadow greenhouse fruit herb",
     "flowering evergreen hardy perennial wild tropical delicate fragrant native climbing",
     "shades feeds supports attracts shelters needs replaces outgrows absorbs protects"),
    ("Birds", "ornithologists",
     "nest feather wing heron sparrow falcon owl gull migration flock egg beak song marsh warbler swallow hawk wetland",
     "migratory nocturnal coastal colorful shy noisy solitary wading tiny graceful",
     "hunts guards follows builds avoids defends warms feeds shares crosses"),
    ("Music", "musicians",
     "melody rhythm chord orchestra violin drum choir harmony tempo score composer piano concert scale ballad guitar verse symphony",
     "melodic rhythmic classical folk lively gentle harmonic acoustic solemn playful",
     "accompanies follows repeats introduces echoes softens supports resolves mirrors carries"),
    ("Architecture", "architects",
     "arch column facade dome tower courtyard staircase window roof beam foundation cathedral bridge wall vault balcony gallery pillar",
     "gothic ornate sturdy tall symmetrical wooden stone elegant spacious narrow",
     "supports frames crowns shelters divides connects overlooks dominates replaces decorates"),
    ("Railways", "railway engineers",
     "locomotive track station signal carriage tunnel junction platform timetable bridge freight line conductor engine depot viaduct sleeper passenger",
     "electric narrow steam suburban express rural heavy busy underground elevated",
     "connects crosses serves pulls replaces links carries reaches bypasses follows"),
    ("Oceans", "oceanographers",
     "tide reef wave current trench coral shelf plankton whale lagoon shoreline kelp island storm seabed dolphin gyre upwelling",
     "tropical deep salty coastal warm turbulent shallow rocky open remote",
     "shelters carries warms cools feeds erodes surrounds hides supports connects"),
    ("Weather", "meteorologists",
     "cloud storm front rainfall humidity breeze drought forecast pressure thunderstorm fog frost hurricane monsoon temperature wind season snowfall",
     "humid dry windy mild tropical seasonal sudden heavy cold changeable",
     "brings follows delays cools warms precedes replaces drives blocks weakens"),
    ("Agriculture", "farmers",
     "crop field harvest soil tractor barn irrigation wheat barley herd fertilizer orchard plow pasture grain farm rotation yield",
     "fertile organic seasonal dry irrigated rural abundant sandy local productive",
     "feeds enriches replaces waters protects exhausts improves supports requires shelters"),
    ("Textiles", "weavers",
     "loom thread fabric wool cotton dye pattern silk needle spindle yarn linen tapestry garment stitch weave fiber embroidery",
     "woven coarse fine dyed patterned durable soft colorful sturdy delicate",
     "strengthens colors binds decorates holds softens replaces covers imitates lines"),
    ("Chemistry", "chemists",
     "molecule atom reaction compound solution acid salt catalyst element bond crystal solvent sample metal gas flask laboratory mixture",
     "stable reactive soluble volatile acidic organic toxic inert pure dilute",
     "dissolves neutralizes releases absorbs forms binds accelerates replaces contains produces"),
    ("Linguistics", "linguists",
     "vowel consonant dialect grammar syllable word accent alphabet sentence meaning language verb noun sound script vocabulary idiom translation",
     "regional spoken written formal informal ancient tonal modern borrowed rare",
     "replaces follows marks expresses shortens borrows influences precedes changes resembles"),
    ("Mountains", "climbers",
     "summit ridge glacier slope pass peak trail rope camp cliff avalanche valley shelter altitude boulder snowfield gully moraine",
     "steep icy rocky remote exposed high narrow windy dangerous gentle",
     "overlooks blocks shelters crosses follows threatens joins dominates hides guards"),
    ("Photography", "photographers",
     "camera lens shutter aperture exposure film print portrait landscape tripod flash sensor frame darkroom negative shadow highlight filter",
     "sharp blurry bright dim wide grainy vivid candid digital analog",
     "captures frames softens sharpens blurs darkens brightens reveals records hides"),
    ("Beekeeping", "beekeepers",
     "hive queen worker drone honey comb colony swarm nectar pollen frame smoker wax apiary brood flower keeper veil",
     "busy healthy wild gentle sweet crowded sealed golden late early",
     "feeds guards protects produces stores follows leaves replaces visits warms"),
    ("Sailing", "sailors",
     "ship sail compass harbor voyage anchor mast chart lighthouse keel current coast storm deck rudder crew port island",
     "wooden coastal northern rough calm long dangerous square narrow steady",
     "guides crosses follows reaches avoids leaves carries steers passes shelters"),
    ("Ceramics", "potters",
     "clay kiln glaze wheel vase bowl jar tile pottery firing plate cup workshop pigment shard vessel mold slip",
     "glazed fired fragile smooth painted earthen thin heavy rustic ornamental",
     "hardens coats colors shapes cracks decorates seals holds replaces protects"),
]

_GENERIC_ADJ = _w("important useful common familiar remarkable unusual practical simple complex early "
                  "modern traditional typical rare popular significant interesting reliable careful detailed")
_CENTURY = _w("twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth")
_SMALL = _w("two three four five six seven eight nine ten twelve fifteen twenty")
_MONTHS = _w("January February March April May June July August September October November December")
_CONNECT = _c("However, In addition, For example, As a result, By contrast, Meanwhile, In particular, "
              "Moreover, Historically, Interestingly, In many cases, At the same time, Even so, Of course, "
              "In other words, For this reason, On the other hand, Not surprisingly, Over the years,")
_PLACE_A = _w("Ash Bel Cor Dun El Fen Gal Har Ist Kel Lor Mar Nor Or Pen Quar Ros Sel Tal Ul Ver Wes Yar Zan "
              "Bram Cal Dor Eth Fal Grim Hal Ivel Jor Kas Lin Mor")
_PLACE_M = ("", "", "", "en", "ar", "il", "o", "and", "er")
_PLACE_B = _w("ford mere holt wick dale ton by stead moor bury field haven gate ridge brook more lund vik "
              "stow thorpe worth marsh cliff port")
_FIRST_NAMES = _w("Anna Ben Clara David Elena Farid Grace Hugo Ines Jonas Kiran Lena Marco Nadia Oskar Priya "
                  "Rosa Samir Tara Viktor Wen Yusuf Zoe Milan Ada Theo Lucia Ravi Mira Emil")

# Sentence templates. {X} is a slot (see _Topic.fill); [a|b|c] picks one
# literal alternative, so a template reused within a document rarely repeats
# a long fixed phrase.
_PROSE_TEMPLATES = _compile([
    "The {A} {N} {V} the {N} in ways that {E} [did not expect|had not predicted|still find surprising].",
    "[Most|Many|Nearly all] {E} agree that the {N} is one of the most {G} [parts of the subject|ideas in the field|things to study].",
    "In {Y}, a [group|team|small party] of {E} [working|living|travelling] near {P} described a {A} {N} for the first time.",
    "Because the {N} {V} the {N}, the two are [often|usually|almost always] studied together.",
    "A {G} {N} [can last|may survive|often lasts] for {K} years if it is [kept|protected|held] away from the {N}.",
    "There is still [some|considerable|lively] debate about whether the {N} really {V} the {N}.",
    "Early [accounts|reports|letters] from {P} mention a {A} {N} that {V} every {N} around it.",
    "[It is worth noting|It should be remembered|Keep in mind] that not every {N} has a {A} {N}.",
    "During the {C} century, interest in the {N} [grew quickly|spread|increased steadily] across {P} and the surrounding [region|countryside|towns].",
    "The {N} and the {N} are closely related, but they differ in {K} [important|basic|practical] ways.",
    "Some {E} argue that a {A} {N} is [simply|really|little more than|essentially] a {G} form of {N}.",
    "[When|Whenever|Once] the {N} becomes too {A}, it [usually|often|soon] {V} the nearby {Ns}.",
    "[Careful measurements|Recent surveys|Long-term records] [show|suggest|indicate] that about {PCT} percent of {Ns} are {A}.",
    "This is [why|one reason] the {N} remains a [central|favorite|recurring] topic for {E} [today|to this day|in many countries].",
    "The [first reliable|earliest known|oldest surviving] description of the {N} was [published|written|printed] in {Y} by a {G} [writer|traveler|teacher] from {P}.",
    "[For beginners|For newcomers|For most readers], the [easiest|simplest|quickest] way to [understand|picture|think about] the {N} is to compare it with the {N}.",
    "A {A} {N} is [rarely|seldom|almost never] found without a {N} [nearby|close by|somewhere near it].",
    "{E} in {P} have [recorded|counted|described] {K} [different kinds|distinct types|separate forms] of {Ns} over the [past|last] {K} years.",
    "Unlike the {N}, the {N} {V} only a {A} {N}.",
    "The [relationship|connection|link] between {Ns} and {Ns} has been [studied|discussed|debated] since the {C} century.",
    "Even a [small|slight|minor] change in the {N} can [affect|alter|influence] how the {N} {V} the {N}.",
    "[Many people|Most students|Children] first learn about the {N} from a {G} [book|lesson|film] or a visit to {P}.",
    "In practice, the {N} is [measured|judged|tested] by comparing it with a {A} {N}.",
    "[Over time|In the long run|Year after year], the {N} {V} more {Ns} than any other [part of the system|feature|element].",
    "[Not all|Few|Only some] {E} accept this view, and the question of the {A} {N} [remains open|is still unsettled|has not been resolved].",
    "One {G} example comes from {P}, where a {A} {N} {V} the local {Ns}.",
    "The word for {N} in [older|early|medieval] texts [often|sometimes|occasionally] refers to a {A} {N} as well.",
    "If the {N} is [removed|taken away|lost], the {N} [quickly|soon|gradually] loses its {A} character.",
    "{Ns} tend to be more {A} in {P} than [elsewhere|in other places|anywhere else].",
    "The {A} {N} is [usually|often|commonly] described as a {G} and {G} [feature|part|element] of {T}.",
    "[Records|Documents|Letters] from {Y} suggest that the {N} was already [well known|widely discussed|familiar to many] at that time.",
    "[Modern|Younger|Most] {E} [rely on|look to|point to] the {N} to explain why the {N} {V} the {N}.",
    "In most cases, the {N} {V} the {N} [slowly and without much warning|over many years|in a matter of days|without anyone noticing].",
    "[Such observations|These findings|Details like these] help explain why the {N} has become so {G}.",
    "Some of the [best|finest|clearest] examples of {A} {Ns} can still be [seen|found|visited] near {P}.",
    "Both the {N} and the {N} play a role, although their importance [varies from place to place|changes over time|is hard to measure].",
    "It took {E} [nearly|more than|almost] {K} [decades|generations] to agree on a [common|single|shared] name for the {N}.",
    "The {N} is [sometimes|often|easily] confused with the {N}, but the two have [little in common|very different origins|different purposes].",
    "[Today|Nowadays|In many places], the {N} is [taught in schools|covered in textbooks|explained in museums] as part of an introduction to {T}.",
    "A typical {N} [contains|holds|includes] at least {K} {Ns}, each with its own {A} [shape|character|role].",
    "[Visitors to|Travelers in|Newcomers to] {P} are often [surprised|impressed|puzzled] by how {A} the {Ns} there can be.",
    "Without a {A} {N}, the {N} would [not be able to do its work|quickly fail|lose much of its value].",
    "The {N} was [once thought|long believed|widely assumed] to be {A}, but this idea was [abandoned|dropped|challenged] after {Y}.",
    "What makes the {N} so {G} is the way it {V} the {N}.",
    "According to a [study|survey|report] by {E} from {P}, [nearly|about|roughly] {PCT} percent of {Ns} change within a single [season|year|decade].",
    "The {A} {Ns} of {P} are among the most {G} [in the world|in the region|anywhere].",
    "[Several|A few|Many] {G} questions about the {N} have not yet been [answered|settled|fully explored].",
    "To see this [clearly|more clearly|in practice], consider what happens when a {A} {N} [meets|replaces|follows] a {N}.",
    "The history of the {N} is [closely|tightly|deeply] tied to [the history|the fortunes|the growth] of {P}.",
    "[Anyone|Someone|A careful observer] who has [watched|studied|followed] a {N} for long enough will notice that it {V} the {N}.",
    "The {N} {V} the {N}, which in turn {V} the {N}.",
    "In {P}, the {N} is [known|famous|remembered] mainly for its {A} {N}.",
    "{K} of the {Ns} described by {E} in {Y} are still [in use|visible|studied] today.",
    "A [simple|rough|common] rule of thumb is that a {A} {N} {V} twice as many {Ns} as a {G} one.",
    "The {N} [depends on|relies on|needs] a steady supply of {Ns} to stay {A}.",
    "Between {Y} and {Y}, the number of known {Ns} [doubled|grew sharply|rose steadily].",
    "Critics point out that the {N} is [harder|more difficult|less easy] to observe than the {N}.",
    "[Local|Regional|National] guides in {P} often describe the {N} as {A} and {G}.",
    "A {A} {N} [usually|normally|generally] {V} the {N} before it {V} the {N}.",
    "Little is known about how the {N} first {V} the {N}.",
])

_TITLE_TEMPLATES = _compile([
    "{TT}: An Overview",
    "Notes on the {AC} {NC}",
    "Understanding {NsC}",
    "A Short History of the {NC}",
    "The {NC} and the {NC}",
    "An Introduction to {TT}",
    "Why the {NC} Matters",
    "{NsC} of {P}",
    "What Every Student Should Know About {NsC}",
    "The {AC} {NC} in {TT}",
])


class _Topic:
    __slots__ = ("name", "lower", "experts", "fill")

    def __init__(self, name, experts, nouns, adjs, verbs):
        self.name = name
        self.lower = name.lower()
        self.experts = experts
        nouns = tuple(n.replace("_", " ") for n in _w(nouns))
        adjs, verbs = _w(adjs), _w(verbs)
        self.fill = {
            "N": nouns, "Ns": tuple(_plural(n) for n in nouns), "A": adjs, "V": verbs,
            "E": (experts,), "G": _GENERIC_ADJ, "C": _CENTURY, "K": _SMALL,
            "T": (self.lower,), "TT": (name,),
            "NC": tuple(n.title() for n in nouns),
            "NsC": tuple(_plural(n).title() for n in nouns),
            "AC": tuple(a.title() for a in adjs),
            "Y": _year, "PCT": _pct, "P": _place,
        }


def _year(rng: Random) -> str:
    return str(1450 + int(rng.random() * 570))


def _pct(rng: Random) -> str:
    return str(5 + int(rng.random() * 90))


def _place(rng: Random) -> str:
    return rng.choice(_PLACE_A) + rng.choice(_PLACE_M) + rng.choice(_PLACE_B)


class _Deck:
    """Draws templates without replacement, reshuffling when empty, so one
    document does not repeat a template before using the others. Templates
    without slots are used at most once per document."""

    __slots__ = ("src", "items", "fresh")

    def __init__(self, src: tuple):
        self.src, self.items, self.fresh = src, [], True

    def draw(self, rng: Random) -> tuple:
        if not self.items:
            self.items = [t for t in self.src if self.fresh or len(t) > 1]
            self.fresh = False
            rng.shuffle(self.items)
        return self.items.pop()


def _fill(pieces: tuple, fill: dict, rng: Random) -> str:
    out = [pieces[0]]
    for i in range(1, len(pieces), 2):
        p = pieces[i]
        f = p if type(p) is tuple else fill[p]
        out.append(rng.choice(f) if type(f) is tuple else f(rng))
        out.append(pieces[i + 1])
    return "".join(out)


# Compound nouns are written with "_" in the specs and shown with a space.
TOPICS: list[_Topic] = [_Topic(*spec) for spec in _TOPIC_SPECS]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _sentence(rng: Random, topic: _Topic, deck: _Deck) -> tuple[str, bool]:
    """One sentence; the flag says whether it starts with a proper noun."""
    t = deck.draw(rng)
    s = _fill(t, topic.fill, rng)
    proper = t[0] == "" and t[1] == "P"
    if rng.random() < 0.22:
        s = rng.choice(_CONNECT) + ", " + (s if proper else s[:1].lower() + s[1:])
        proper = False
    return _cap(s), proper


def _paragraph(rng: Random, topic: _Topic, deck: _Deck, lo: int = 3, hi: int = 7) -> str:
    n = lo + int(rng.random() * (hi - lo + 1))
    sents = []
    i = 0
    while i < n:
        s, _ = _sentence(rng, topic, deck)
        # occasionally join two sentences into one longer one (kept <= 30 words)
        if i + 1 < n and rng.random() < 0.12:
            s2, proper = _sentence(rng, topic, deck)
            if s.count(" ") + s2.count(" ") + 3 <= 30:
                s = s[:-1] + ", and " + (s2 if proper else s2[:1].lower() + s2[1:])
                i += 1
        sents.append(s)
        i += 1
    return _A_AN.sub(r"\1n ", " ".join(sents))


def _title(rng: Random, topic: _Topic) -> str:
    return _A_AN.sub(r"\1n ", _fill(rng.choice(_TITLE_TEMPLATES), topic.fill, rng))


def _n_paragraphs(rng: Random) -> int:
    lo, hi = PROSE_PARAGRAPHS
    # skewed towards shorter documents: triangular with mode near lo + 2
    return int(round(rng.triangular(lo, hi, lo + 2)))


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _site(rng: Random) -> str:
    return (rng.choice(_PLACE_A) + rng.choice(_PLACE_B)).lower() + rng.choice(
        ("", "", "wiki", "notes", "daily", "hub", "online", "journal", "press", "guide"))


_TLDS = ("com", "org", "net", "info", "io", "co.uk", "com", "org")


def _url(rng: Random, path: str, tld: Optional[str] = None, site: Optional[str] = None) -> str:
    site = site or _site(rng)
    tld = tld or rng.choice(_TLDS)
    www = "www." if rng.random() < 0.5 else ""
    return f"https://{www}{site}.{tld}/{path}"


# ---------------------------------------------------------------------------
# Generators. Each returns (text, lang, url, extra_flags).
# ---------------------------------------------------------------------------
def _gen_prose(rng: Random):
    topic = rng.choice(TOPICS)
    deck = _Deck(_PROSE_TEMPLATES)
    paras = [_paragraph(rng, topic, deck) for _ in range(_n_paragraphs(rng))]
    title = _title(rng, topic)
    if rng.random() < 0.6:
        paras.insert(0, title)
    section = rng.choice(("wiki", "articles", "guide", "learn", "library", "topics"))
    return "\n\n".join(paras), "en", _url(rng, f"{section}/{_slug(title)}"), ""


def _gen_long(rng: Random):
    parts = []
    size = 0
    target = LONG_DOC_MIN_CHARS + int(rng.random() * 60_000)
    chapter = 0
    title = "Collected Notes"
    while size < target:
        topic = rng.choice(TOPICS)
        chapter += 1
        head = f"Chapter {chapter}: {_title(rng, topic)}"
        if chapter == 1:
            title = head
        parts.append(head)
        size += len(head) + 2
        deck = _Deck(_PROSE_TEMPLATES)
        for _ in range(6 + int(rng.random() * 10)):
            p = _paragraph(rng, topic, deck, 4, 8)
            parts.append(p)
            size += len(p) + 2
    return "\n\n".join(parts), "en", _url(rng, f"books/{_slug(title)}.txt"), ""


# --- web pages ----------------------------------------------------------------------
_NAV_ITEMS = _w("Home About Contact Blog News Shop Services Products Events Gallery FAQ Support Careers "
                "Login Register Resources Archive Forum Help Team Pricing Docs")
_NAV_SEPS = (" | ", " / ", " · ", "  ", " > ")
_TOP_LINES = _c("Skip to main content, Skip to navigation, Menu, Search, Search this site, Sign in, Log in, "
                "Register, Cart (0), Toggle navigation, Main menu, Close menu, Open menu, My account")
_COOKIE_LINES = _c(
    "We use cookies to improve your experience. Accept all cookies, "
    "This website uses cookies to ensure you get the best experience on our website., "
    "By continuing to browse the site you agree to our use of cookies., "
    "We use cookies and similar technologies to analyse traffic. Cookie settings, "
    "Accept all cookies, Reject non-essential cookies, Manage preferences, "
    "Our partners use cookies to personalise content and ads. Learn more in our cookie policy.")
_JS_LINES = _c("Please enable JavaScript to view this page., Enable javascript, "
               "JavaScript is disabled in your browser., This site works best with JavaScript enabled.")
_AFTER_LINES = _c("Related posts, Leave a comment, Your email address will not be published., "
                  "Required fields are marked *, Subscribe to our newsletter, Enter your email, Subscribe, "
                  "Previous post, Next post, Back to top, Read more, Load more, Print this page, "
                  "Was this article helpful? Yes No, Report an error")
_FOOTER_LINKS = _c("Terms of use, Privacy policy, Cookie policy, Sitemap, Accessibility, Imprint, "
                   "Advertise, Contact us, About us")


def _nav_line(rng: Random) -> str:
    k = 3 + int(rng.random() * 5)
    return rng.choice(_NAV_SEPS).join(rng.sample(_NAV_ITEMS, k))


def _date(rng: Random) -> str:
    return f"{rng.choice(_MONTHS)} {1 + int(rng.random() * 28)}, {2005 + int(rng.random() * 20)}"


def _gen_web(rng: Random):
    topic = rng.choice(TOPICS)
    site = _site(rng)
    site_name = site.title()
    title = _title(rng, topic)
    lines = []
    if rng.random() < 0.5:
        lines.append(rng.choice(_TOP_LINES))
    lines.append(site_name)
    lines.append(_nav_line(rng))
    if rng.random() < 0.6:
        lines.append(rng.choice(_COOKIE_LINES))
    if rng.random() < 0.3:
        lines.append(rng.choice(_JS_LINES))
    if rng.random() < 0.4:
        lines.append(f"You are here: Home > {topic.name} > {title}")
    lines.append(title)
    r = rng.random()
    if r < 0.4:
        author = rng.choice(_FIRST_NAMES) if rng.random() < 0.7 else rng.choice(("admin", "editor", "staff"))
        lines.append(f"Posted on {_date(rng)} by {author}")
    elif r < 0.7:
        lines.append(f"Last updated: {_date(rng)}")
    if rng.random() < 0.3:
        lines.append(f"{2 + int(rng.random() * 12)} min read")
    deck = _Deck(_PROSE_TEMPLATES)
    for _ in range(2 + int(rng.random() * 4)):
        lines.append(_paragraph(rng, topic, deck))
    if rng.random() < 0.5:
        lines.append("Share: " + " | ".join(rng.sample(("Facebook", "Twitter", "Email", "Print", "Pinterest",
                                                         "LinkedIn", "WhatsApp"), 3)))
    if rng.random() < 0.5:
        lines.append("Tags: " + ", ".join(rng.sample(topic.fill["N"], 3)))
    for _ in range(int(rng.random() * 4)):
        lines.append(rng.choice(_AFTER_LINES))
    if rng.random() < 0.5:
        lines.append("Related posts")
        for _ in range(2 + int(rng.random() * 3)):
            lines.append(_title(rng, topic))
    lines.append(" | ".join(rng.sample(_FOOTER_LINKS, 2 + int(rng.random() * 3))))
    year = 2010 + int(rng.random() * 15)
    lines.append(rng.choice((f"© {year} {site_name}. All rights reserved.",
                             f"Copyright {year} {site_name}", f"© {site_name} {year}",
                             f"Copyright © {year} {site_name}. All rights reserved.")))
    if rng.random() < 0.2:
        lines.append(f"Powered by {rng.choice(_PLACE_A)}Press")
    return "\n".join(lines), "en", _url(rng, f"{_slug(topic.name)}/{_slug(title)}", site=site), ""


# --- spam -----------------------------------------------------------------------------
_PRODUCTS = _c("shoes, sneakers, watches, handbags, sunglasses, phones, laptops, headphones, jerseys, loans, "
               "car insurance, diet pills, supplements, vitamins, perfume, jewelry, concert tickets, hotels, "
               "flights, used cars, tires, mattresses, backpacks, phone cases, gaming chairs, essays, followers")
_SPAM_MODS = _w("cheap best discount free top cheapest wholesale authentic genuine fast online new hot")
_SPAM_TAILS = _c("buy now, free shipping, on sale, online store, near me, for sale, best price, "
                 "lowest price, order today, deals, coupon code, 2024, 2025, reviews, outlet, clearance")
_SPAM_SENTENCES = _compile([
    "Looking for {kw}? You have come to the right place.",
    "Our {kw} are the best {kw} in {P}.",
    "Buy {kw} now and save {pct}% on every order!",
    "We sell {kw} at the lowest price guaranteed.",
    "Order {kw} today with free shipping.",
    "Click here to get {kw} now!!!",
    "Best {kw} online, cheap {kw}, {kw} sale.",
    "Why pay more for {kw}? Get {kw} here.",
    "Top rated {kw} for {year}.",
    "100% satisfaction with our {kw}.",
])


def _keyword(rng: Random, product: str) -> str:
    r = rng.random()
    if r < 0.4:
        return f"{rng.choice(_SPAM_MODS)} {product}"
    if r < 0.7:
        return f"{product} {rng.choice(_SPAM_TAILS)}"
    return f"{rng.choice(_SPAM_MODS)} {product} {rng.choice(_SPAM_TAILS)}"


def _gen_spam(rng: Random):
    product = rng.choice(_PRODUCTS)
    kws = [_keyword(rng, product) for _ in range(2 + int(rng.random() * 3))]
    style = rng.random()
    site = "-".join(kws[0].split()[:3]) + f"-{rng.choice(_PLACE_B)}"
    if style < 0.3:  # keyword block
        words = []
        for _ in range(40 + int(rng.random() * 120)):
            words.append(rng.choice(kws))
        lines = []
        while words:
            k = 3 + int(rng.random() * 6)
            lines.append(" ".join(words[:k]))
            words = words[k:]
        text = "\n".join(lines)
    elif style < 0.55:  # one shouting line repeated
        line = f"{kws[0].upper()} {rng.choice(('BUY NOW', 'CLICK HERE', 'BEST PRICE', 'ORDER TODAY'))}!!!"
        other = f"{kws[-1]} {rng.choice(_SPAM_TAILS)}"
        n = 8 + int(rng.random() * 25)
        text = "\n".join(line if rng.random() < 0.8 else other for _ in range(n))
    elif style < 0.85:  # SEO paragraphs repeated with tiny variation
        fill = {"kw": tuple(kws), "P": _place, "pct": lambda r: str(10 + int(r.random() * 80)),
                "year": lambda r: str(2015 + int(r.random() * 11))}
        base = [_fill(rng.choice(_SPAM_SENTENCES), fill, rng) for _ in range(4 + int(rng.random() * 3))]
        paras = []
        for _ in range(3 + int(rng.random() * 5)):
            p = list(base)
            if rng.random() < 0.5:
                p[int(rng.random() * len(p))] = _fill(rng.choice(_SPAM_SENTENCES), fill, rng)
            paras.append(" ".join(p))
        text = f"{kws[0].title()} - {kws[1].title()}\n\n" + "\n\n".join(paras)
    else:  # link farm
        lines = []
        for _ in range(15 + int(rng.random() * 30)):
            kw = rng.choice(kws)
            lines.append(f"{kw} - http://{kw.replace(' ', '-')}.{rng.choice(('biz', 'info', 'xyz', 'top'))}/"
                         f"{rng.choice(('go', 'buy', 'deal', 'offer'))}")
        text = "Click here for " + kws[0] + "\n" + "\n".join(lines)
    return text, "en", f"http://{site}.{rng.choice(('biz', 'info', 'xyz', 'top', 'com'))}/{_slug(kws[0])}", ""


# --- code -----------------------------------------------------------------------------
_ID_NOUNS = _w("count total item value index buffer result node user record price score name path size offset "
               "limit data config cache queue table key entry flag width height color token line word page "
               "file event message request response session order account")
_ID_VERBS = _w("get load parse compute update build find merge filter count render validate normalize format "
               "read write split collect apply resolve")
_PY_IMPORTS = _c("import os, import sys, import json, import re, import math, import logging, "
                 "from collections import defaultdict, from dataclasses import dataclass, "
                 "from pathlib import Path, from typing import Iterable, import itertools")
_JS_MODULES = _w("fs path util events http crypto os url")


def _ident(rng: Random, camel: bool = False) -> str:
    v, n = rng.choice(_ID_VERBS), rng.choice(_ID_NOUNS)
    return v + n.title() if camel else f"{v}_{n}"


def _py_function(rng: Random) -> str:
    name = _ident(rng)
    a, b = rng.sample(_ID_NOUNS, 2)
    acc = rng.choice(("total", "result", "acc", "out", "best"))
    k = 2 + int(rng.random() * 9)
    style = int(rng.random() * 4)
    doc = f'    """{rng.choice(_ID_VERBS).title()} the {a} values and return the {acc}."""\n'
    if style == 0:
        body = (f"    {acc} = 0\n    for i, {a} in enumerate({a}s):\n        if i % {k} == 0:\n"
                f"            {acc} += {a} * {b}\n        else:\n            {acc} -= {a}\n    return {acc}\n")
        sig = f"def {name}({a}s, {b}={k}):\n"
    elif style == 1:
        body = (f"    {acc} = [x for x in {a}s if x is not None and x > {b}]\n"
                f"    {acc}.sort(reverse={rng.choice(('True', 'False'))})\n    return {acc}[:{k}]\n")
        sig = f"def {name}({a}s, {b}=0):\n"
    elif style == 2:
        body = (f"    {acc} = defaultdict(list)\n    for {a} in {a}s:\n"
                f"        {acc}[{a}.get('{b}', '')].append({a})\n"
                f"    return {{key: len(v) for key, v in {acc}.items() if len(v) >= {k}}}\n")
        sig = f"def {name}({a}s):\n"
    else:
        body = (f"    path = Path({a})\n    if not path.exists():\n"
                f"        raise FileNotFoundError(f\"missing {a}: {{path}}\")\n"
                f"    with path.open() as fh:\n        {acc} = [line.strip() for line in fh]\n"
                f"    return {acc}[:{k * 10}]\n")
        sig = f"def {name}({a}):\n"
    return sig + doc + body


def _py_class(rng: Random) -> str:
    a = rng.choice(_ID_NOUNS)
    cls = a.title() + rng.choice(("Cache", "Store", "Registry", "Queue", "Index", "Buffer"))
    size = 2 ** (4 + int(rng.random() * 8))
    return (f"class {cls}:\n    \"\"\"Keep recently used {a}s in memory.\"\"\"\n\n"
            f"    def __init__(self, size={size}):\n        self.size = size\n        self._data = {{}}\n\n"
            f"    def get(self, key, default=None):\n        return self._data.get(key, default)\n\n"
            f"    def put(self, key, value):\n        if len(self._data) >= self.size:\n"
            f"            self._data.pop(next(iter(self._data)))\n        self._data[key] = value\n\n"
            f"    def __len__(self):\n        return len(self._data)\n")


def _gen_python(rng: Random) -> tuple[str, str]:
    parts = [f'"""{rng.choice(_ID_VERBS).title()} helpers for {rng.choice(_ID_NOUNS)} '
             f'{rng.choice(_ID_NOUNS)} handling."""',
             "\n".join(sorted(rng.sample(_PY_IMPORTS, 2 + int(rng.random() * 3))))]
    if "defaultdict" not in parts[1]:
        parts[1] += "\nfrom collections import defaultdict"
    if "Path" not in parts[1]:
        parts[1] += "\nfrom pathlib import Path"
    for _ in range(2 + int(rng.random() * 5)):
        parts.append(_py_class(rng) if rng.random() < 0.2 else _py_function(rng))
    if rng.random() < 0.5:
        parts.append(f'if __name__ == "__main__":\n    print({_ident(rng)}(sys.argv[1:]))')
    return "\n\n\n".join(parts) + "\n", "py"


def _gen_js(rng: Random) -> tuple[str, str]:
    mods = rng.sample(_JS_MODULES, 2)
    parts = ["'use strict';\n" + "\n".join(f"const {m} = require('{m}');" for m in mods)]
    names = []
    for _ in range(2 + int(rng.random() * 5)):
        name = _ident(rng, camel=True)
        names.append(name)
        a, b = rng.sample(_ID_NOUNS, 2)
        k = 1 + int(rng.random() * 20)
        if rng.random() < 0.5:
            parts.append(f"// {rng.choice(_ID_VERBS).title()} every {a} above the {b} limit.\n"
                         f"function {name}({a}s, {b}) {{\n  let total = {k};\n"
                         f"  for (let i = 0; i < {a}s.length; i++) {{\n    if ({a}s[i] > {b}) {{\n"
                         f"      total += {a}s[i];\n    }}\n  }}\n  return total;\n}}")
        else:
            parts.append(f"const {name} = async ({a}, options = {{}}) => {{\n"
                         f"  const {b} = options.{b} ?? {k};\n"
                         f"  const items = await Promise.all({a}.map((x) => x.{rng.choice(_ID_VERBS)}()));\n"
                         f"  return items.filter((x) => x.{b} >= {b}).slice(0, {k * 5});\n}};")
    parts.append("module.exports = { " + ", ".join(names) + " };")
    return "\n\n".join(parts) + "\n", "js"


def _gen_c(rng: Random) -> tuple[str, str]:
    parts = ["#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>"]
    fns = []
    for _ in range(1 + int(rng.random() * 4)):
        name = _ident(rng)
        arr, acc = rng.sample(_ID_NOUNS, 2)
        k = 2 + int(rng.random() * 9)
        fns.append(name)
        parts.append(f"/* {rng.choice(_ID_VERBS).title()} the {arr} array. */\n"
                     f"static long {name}(const int *{arr}, size_t n) {{\n    long {acc} = 0;\n"
                     f"    for (size_t i = 0; i < n; i++) {{\n        if ({arr}[i] % {k} == 0)\n"
                     f"            {acc} += {arr}[i];\n        else\n            {acc} -= {k};\n    }}\n"
                     f"    return {acc};\n}}")
    n = 4 + int(rng.random() * 8)
    vals = ", ".join(str(int(rng.random() * 100)) for _ in range(n))
    calls = "\n".join(f'    printf("%ld\\n", {f}(values, {n}));' for f in fns)
    parts.append(f"int main(void) {{\n    int values[{n}] = {{{vals}}};\n{calls}\n    return 0;\n}}")
    return "\n\n".join(parts) + "\n", "c"


def _gen_code(rng: Random):
    r = rng.random()
    text, ext = _gen_python(rng) if r < 0.5 else (_gen_js(rng) if r < 0.8 else _gen_c(rng))
    user = rng.choice(_FIRST_NAMES).lower()
    repo = rng.choice(_ID_NOUNS) + "-" + rng.choice(("tools", "utils", "lib", "core", "kit", "app"))
    fname = rng.choice(_ID_NOUNS) + "_" + rng.choice(_ID_VERBS)
    return text, "en", f"https://code.{_site(rng)}.dev/{user}/{repo}/blob/main/{fname}.{ext}", ""


# --- math -----------------------------------------------------------------------------
def _poly(coeffs: list[int]) -> str:
    """coeffs[i] is the coefficient of x**i; rendered highest power first."""
    terms = []
    for p in range(len(coeffs) - 1, -1, -1):
        c = coeffs[p]
        if c == 0:
            continue
        mag = abs(c)
        body = ("" if mag == 1 and p > 0 else str(mag)) + ("" if p == 0 else ("x" if p == 1 else f"x^{{{p}}}"))
        sign = "-" if c < 0 else "+"
        terms.append((sign, body))
    if not terms:
        return "0"
    out = ("-" if terms[0][0] == "-" else "") + terms[0][1]
    for sign, body in terms[1:]:
        out += f" {sign} {body}"
    return out


def _frac(q: Fraction) -> str:
    if q.denominator == 1:
        return str(q.numerator)
    sign = "-" if q < 0 else ""
    return f"{sign}\\frac{{{abs(q.numerator)}}}{{{q.denominator}}}"


def _ri(rng: Random, lo: int, hi: int) -> int:
    return lo + int(rng.random() * (hi - lo + 1))


def _m_derivative(rng):
    cs = [_ri(rng, -9, 9) for _ in range(_ri(rng, 3, 5))]
    cs[-1] = cs[-1] or 1
    ds = [i * cs[i] for i in range(1, len(cs))]
    x0 = _ri(rng, -3, 4)
    val = sum(d * x0 ** i for i, d in enumerate(ds))
    return (f"Let $f(x) = {_poly(cs)}$. Differentiating term by term gives $f'(x) = {_poly(ds)}$, "
            f"and therefore $f'({x0}) = {val}$.")


def _m_integral(rng):
    c, n, a = _ri(rng, 1, 9), _ri(rng, 1, 5), _ri(rng, 1, 4)
    v = Fraction(c * a ** (n + 1), n + 1)
    return (f"For the definite integral we use the power rule:\n$$\\int_0^{{{a}}} {c if c > 1 else ''}x^{{{n}}}\\,dx "
            f"= \\frac{{{c}\\cdot {a}^{{{n + 1}}}}}{{{n + 1}}} = {_frac(v)}.$$")


def _m_sum(rng):
    n = _ri(rng, 5, 200)
    return (f"The sum of the first {n} positive integers is $\\sum_{{i=1}}^{{{n}}} i = \\frac{{{n}({n}+1)}}{{2}} "
            f"= {n * (n + 1) // 2}$, and the sum of their squares is "
            f"$\\sum_{{i=1}}^{{{n}}} i^2 = {n * (n + 1) * (2 * n + 1) // 6}$.")


def _m_linear(rng):
    a, b, c = _ri(rng, 2, 12), _ri(rng, -20, 20), _ri(rng, -50, 50)
    x = Fraction(c - b, a)
    bs = f"+ {b}" if b >= 0 else f"- {-b}"
    return (f"Solve ${a}x {bs} = {c}$. Moving the constant to the right-hand side gives ${a}x = {c - b}$, "
            f"so $x = {_frac(x)}$.")


def _m_quadratic(rng):
    r1, r2 = _ri(rng, -9, 9), _ri(rng, -9, 9)
    eq = _poly([r1 * r2, -(r1 + r2), 1])

    def fac(r):
        return "x" if r == 0 else (f"(x - {r})" if r > 0 else f"(x + {-r})")

    return (f"The equation ${eq} = 0$ factors as ${fac(r1)}{fac(r2)} = 0$, so its roots are $x = {r1}$ "
            f"and $x = {r2}$. Their sum is ${r1 + r2}$ and their product is ${r1 * r2}$.")


def _m_det(rng):
    a, b, c, d = (_ri(rng, -9, 9) for _ in range(4))
    return (f"Consider the matrix\n\\begin{{equation}}\nA = \\begin{{pmatrix}} {a} & {b} \\\\ {c} & {d} "
            f"\\end{{pmatrix}}.\n\\end{{equation}}\nIts determinant is $\\det A = ({a})({d}) - ({b})({c}) = "
            f"{a * d - b * c}$, and its trace is $\\operatorname{{tr}} A = {a + d}$.")


def _m_prob(rng):
    k = _ri(rng, 2, 10)
    p = (5 / 6) ** k
    return (f"If a fair die is rolled {k} times, the probability of never seeing a six is "
            f"$\\left(\\frac{{5}}{{6}}\\right)^{{{k}}} \\approx {p:.4f}$, so the probability of at least one six "
            f"is about ${1 - p:.4f}$.")


def _m_theorem(rng):
    k = _ri(rng, 1, 12)
    m = _ri(rng, 2, 9)
    return (f"Theorem {k}. For every integer $n \\ge 1$, the number $n^{{2}} + n$ is divisible by $2$.\n"
            f"Proof. We have $n^{{2}} + n = n(n + 1)$, a product of two consecutive integers, one of which is "
            f"even. For example, with $n = {m}$ we get ${m * m + m} = 2 \\cdot {(m * m + m) // 2}$. $\\square$")


def _m_arith(rng):
    rows = []
    for _ in range(_ri(rng, 3, 6)):
        a, b = _ri(rng, 2, 99), _ri(rng, 2, 99)
        op = rng.random()
        if op < 0.4:
            rows.append(f"${a} + {b} = {a + b}$")
        elif op < 0.7:
            rows.append(f"${a} \\times {b} = {a * b}$")
        else:
            rows.append(f"${a * b} \\div {b} = {a}$")
    return "Check the following computations:\n" + "\n".join(rows)


_MATH_PARTS = (_m_derivative, _m_integral, _m_sum, _m_linear, _m_quadratic, _m_det, _m_prob, _m_theorem, _m_arith)
_MATH_HEADS = _c("Calculus, Algebra, Probability, Linear Algebra, Number Theory, Precalculus")
_MATH_GLUE = _c("Next we turn to a related problem., The same idea works in the following case., "
                "We now look at another example., This leads to the next exercise., "
                "As a further check consider the following.")


def _gen_math(rng: Random):
    head = rng.choice(_MATH_HEADS)
    k = _ri(rng, 1, 30)
    parts = [f"{rng.choice(('Exercise set', 'Lecture', 'Worksheet', 'Problem set'))} {k}: {head}"]
    for i in range(_ri(rng, 3, 7)):
        if i and rng.random() < 0.5:
            parts.append(rng.choice(_MATH_GLUE))
        parts.append(rng.choice(_MATH_PARTS)(rng))
    return "\n\n".join(parts), "en", _url(rng, f"math/{_slug(head)}/{k}"), ""


# --- non-English ---------------------------------------------------------------------
_DE = {
    "N": _c("der Fluss, die Stadt, das Haus, der Wald, die Brücke, das Wasser, der Berg, die Kirche, das Dorf, "
            "der Markt, die Schule, das Buch, der Garten, die Straße, das Museum, der Hafen, die Regierung, "
            "das Wetter, der Winter, die Geschichte, das Land, der Bahnhof, die Familie, der Lehrer, "
            "die Wissenschaft, die Arbeit, der Weg, die Sprache, der See, das Rathaus"),
    "A": _w("alt groß klein wichtig bekannt schön neu lang kalt ruhig schnell einfach schwierig berühmt "
            "modern historisch dunkel breit"),
    "V": _c("liegt, steht, wächst, beginnt, bleibt, entsteht, verändert sich, wirkt, endet"),
    "S": _w("Frühling Sommer Herbst Winter"),
}
_DE_T = _compile([
    "{N} {V} seit vielen Jahren in der Nähe von {P}.",
    "Im Jahr {Y} war {n} noch sehr {A}.",
    "Viele Menschen glauben, dass {n} besonders {A} ist.",
    "Heute ist {n} {A} und {A}, aber das war nicht immer so.",
    "Nach Angaben der Forscher {V} {n} jedes Jahr ein wenig anders.",
    "Man sagt, dass {n} und {n} eng miteinander verbunden sind.",
    "In {P} gibt es außerdem ein kleines Museum über die Geschichte der Region.",
    "Zwischen {Y} und {Y} wurde {n} mehrmals umgebaut.",
    "Für die Bewohner von {P} ist {n} bis heute sehr wichtig.",
    "Die Kinder lernen in der Schule, dass {n} {A} ist.",
    "Von {P} nach {P} fährt man mit dem Zug ungefähr {K} Stunden.",
    "Am Abend wird {n} {A} und still.",
    "Im Sommer kommen viele Besucher, weil {n} so {A} ist.",
    "Niemand weiß genau, warum {n} damals so {A} war.",
    "Auf dem Weg nach {P} sieht man {n} schon von weitem.",
    "Seit {Y} gilt {n} als besonders {A}.",
    "Ein Besuch in {P} lohnt sich vor allem im {S}.",
    "Laut einer Umfrage finden {K} von zehn Einwohnern, dass {n} {A} ist.",
    "Früher galt {n} als weniger {A} als heute.",
    "In alten Berichten aus {P} wird {n} oft erwähnt.",
])
_FR = {
    "N": _c("la rivière, le village, la ville, le pont, la montagne, l'église, le marché, l'école, le livre, "
            "le jardin, la rue, le musée, le port, le gouvernement, le temps, l'hiver, l'histoire, le pays, "
            "la gare, la famille, le professeur, la science, le travail, le chemin, la langue, la forêt, "
            "la mer, le château, le lac, la place"),
    "A": _w("célèbre magnifique calme simple difficile moderne historique rapide large riche pauvre étrange "
            "agréable utile fragile immense typique"),
    "S": _c("en été, en hiver, en automne, au printemps"),
}
_FR_T = _compile([
    "{N} se trouve depuis longtemps près de {P}.",
    "En {Y}, {n} était déjà très {A}.",
    "Beaucoup de gens pensent que {n} est particulièrement {A}.",
    "Aujourd'hui, {n} est {A} et {A}, mais ce n'était pas toujours le cas.",
    "Selon les chercheurs, {n} change un peu chaque année.",
    "On dit souvent que {n} et {n} sont étroitement liés.",
    "À {P}, il existe aussi un petit musée consacré à l'histoire de la région.",
    "Ceux qui visitent {P} devraient aussi voir {n}.",
    "Entre {Y} et {Y}, {n} a été transformé plusieurs fois.",
    "Pour les habitants de {P}, {n} reste très {A}.",
    "Les enfants de la région apprennent à l'école que {n} est {A}.",
    "Il faut environ {K} heures pour aller de {P} à {P} en train.",
    "Le soir, {n} devient plus {A} et plus calme.",
    "Personne ne sait vraiment pourquoi {n} était si {A} à cette époque.",
    "Sur la route de {P}, on aperçoit {n} de très loin.",
    "Depuis {Y}, {n} est considéré comme particulièrement {A}.",
    "Une visite à {P} vaut surtout la peine {S}.",
    "Selon un sondage, {K} habitants sur dix trouvent que {n} est {A}.",
    "Autrefois, {n} semblait moins {A} qu'aujourd'hui.",
    "Dans les anciens récits de {P}, on mentionne souvent {n}.",
])
_ES = {
    "N": _c("el río, la ciudad, la casa, el bosque, el puente, el agua, la montaña, la iglesia, el pueblo, "
            "el mercado, la escuela, el libro, el jardín, la calle, el museo, el puerto, el gobierno, "
            "el tiempo, el invierno, la historia, el país, la estación, la familia, el maestro, la ciencia, "
            "el trabajo, el camino, la lengua, el lago, la plaza"),
    "A": _w("importante grande interesante difícil fácil útil popular agradable enorme simple frágil notable "
            "especial increíble natural central"),
    "S": _c("en verano, en invierno, en otoño, en primavera"),
}
_ES_T = _compile([
    "{N} se encuentra desde hace mucho tiempo cerca de {P}.",
    "En {Y}, {n} ya era muy {A}.",
    "Mucha gente piensa que {n} es especialmente {A}.",
    "Hoy {n} es {A} y {A}, pero no siempre fue así.",
    "Según los investigadores, {n} cambia un poco cada año.",
    "Se dice que {n} y {n} están muy relacionados.",
    "En {P} también hay un pequeño museo dedicado a la historia de la región.",
    "Quienes visitan {P} también deberían conocer {n}.",
    "Entre {Y} y {Y}, {n} fue reformado varias veces.",
    "Para los habitantes de {P}, {n} sigue siendo muy {A}.",
    "Los niños aprenden en la escuela que {n} es {A}.",
    "Se tarda unas {K} horas en ir de {P} a {P} en tren.",
    "Por la noche, {n} se vuelve más tranquilo y más {A}.",
    "Nadie sabe muy bien por qué {n} era tan {A} en aquella época.",
    "En el camino a {P} se ve {n} desde muy lejos.",
    "Desde {Y}, {n} se considera especialmente {A}.",
    "Una visita a {P} merece la pena sobre todo {S}.",
    "Según una encuesta, {K} de cada diez vecinos creen que {n} es {A}.",
    "Antes, {n} parecía menos {A} que ahora.",
    "En los relatos antiguos de {P} se menciona a menudo {n}.",
])
_RU = {
    "N": _c("река, город, дом, лес, мост, вода, гора, церковь, деревня, рынок, школа, книга, сад, улица, "
            "музей, порт, правительство, погода, зима, история, страна, вокзал, семья, учитель, наука, "
            "работа, дорога, язык, озеро, площадь"),
}
_RU_T = _compile([
    "{N} находится рядом с городом {P}.",
    "{N} играет важную роль в жизни города {P}.",
    "По словам учёных, {n} каждый год немного меняется.",
    "Сегодня {n} привлекает туристов со всей страны.",
    "Говорят, что {n} и {n} тесно связаны между собой.",
    "В городе {P} есть небольшой музей, посвящённый истории региона.",
    "Об этом месте написано больше {K} книг.",
    "Путь из города {P} в город {P} занимает около {K} часов.",
    "{N} по-прежнему остаётся частью местной истории.",
    "В {Y} году здесь впервые появился новый мост.",
    "Летом сюда приезжают тысячи людей со всей страны.",
    "Дети в местной школе узнают, что {n} имеет долгую историю.",
    "Никто точно не знает, когда здесь появилась первая школа.",
    "Вечером на улицах становится тихо и спокойно.",
    "С {Y} года {n} считается символом города {P}.",
    "Каждый год город {P} посещают тысячи туристов.",
    "Местные жители часто говорят, что {n} — это сердце города {P}.",
    "В старых книгах о городе {P} часто упоминается {n}.",
    "{N} появляется почти на каждой открытке из города {P}.",
    "Зимой {n} выглядит совсем иначе, чем летом.",
])
_RU_PA = _w("Бел Крас Нов Сос Лип Дуб Берез Камен Озер Мос Яр Свет Холм Бор Ольх")
_RU_PB = _w("ово ино ск град поль ец ка овка инск")
_ZH = {
    "N": _w("城市 河流 山区 历史 文化 经济 学校 学生 老师 医院 医生 农民 工厂 市场 政府 科学 技术 研究 "
            "社会 家庭 孩子 天气 森林 湖泊 道路 桥梁 火车 图书馆 博物馆 音乐 语言 传统 节日 食物 茶叶 "
            "水果 村庄 港口"),
    "V": _w("发展 研究 影响 改变 保护 建立 提高 介绍 发现 讨论 参观 学习 支持"),
    "A": _w("重要 美丽 古老 传统 现代 著名 安静 繁荣 复杂 简单 丰富"),
    "T": _w("近年来 过去 现在 目前 每年 从前 后来 最近"),
    "S": _w("春天 夏天 秋天 冬天 周末 节日"),
}
_ZH_T = _compile([
    "{T}，{P}的{N}一直在{V}{N}。",
    "{N}是{P}最{A}的{N}之一。",
    "很多人认为{N}对{N}有很大的影响。",
    "在{Y}年，{P}开始{V}当地的{N}。",
    "专家指出，{N}和{N}之间的关系非常{A}。",
    "{P}的{N}每年吸引大量游客。",
    "为了{V}{N}，当地政府采取了许多措施。",
    "从{P}到{P}坐火车大约需要{K}个小时。",
    "{T}，越来越多的{N}开始关注{N}。",
    "这里的{N}非常{A}，也很有特色。",
    "{P}人常说，{N}是这座城市的骄傲。",
    "关于{N}的第一份记录出现在{Y}年。",
    "每到{S}，{P}的{N}都会变得非常热闹。",
    "根据调查，大约{K}成的居民认为{N}很{A}。",
])
_ZH_PLACE = _w("东 西 南 北 安 平 新 长 清 河 山 江 宁 阳 华 湖 海 云 州 城")
_JA = {
    "N": _w("町 川 山 歴史 文化 経済 学校 学生 先生 病院 医者 工場 市場 政府 科学 技術 研究 社会 家族 "
            "子供 天気 季節 森 湖 道路 橋 電車 図書館 博物館 音楽 言葉 伝統 祭り 料理 お茶 果物 村 港"),
    "V": _w("調べます 守ります 紹介します 変えます 育てます 作ります 見学します 学びます 支えます"),
    "A": _w("大切な 美しい 古い 新しい 有名な 静かな 大きな 小さな 複雑な 便利な"),
    "S": _w("春 夏 秋 冬 週末 お正月"),
}
_JA_T = _compile([
    "{P}の{N}は{A}{N}です。",
    "{Y}年に、{P}で新しい{N}が作られました。",
    "多くの人は{N}が{N}にとって大切だと考えています。",
    "専門家によると、{N}と{N}の関係はとても深いそうです。",
    "毎年、{P}の{N}には多くの観光客が訪れます。",
    "町の人々は{N}を{V}。",
    "昔から、この地域では{N}がよく知られています。",
    "{P}から{P}まで電車で約{K}時間かかります。",
    "子供たちは学校で{N}について学びます。",
    "{P}には{A}{N}がたくさんあります。",
    "{P}の人々は、{N}を町の誇りだと言います。",
    "{N}についての最初の記録は{Y}年のものです。",
    "{S}になると、{P}の{N}はとてもにぎやかになります。",
    "調査によると、住民の約{K}割が{N}が好きだと答えました。",
])
_JA_PLACE = _w("山 川 田 中 本 木 森 野 原 石 松 宮 高 大 小 東 西 北 南 島")
_DE_PLACE = _w("Ober Unter Alt Neu Hoch Klein Groß Stein Wald Berg")
_DE_PLACE_B = _w("dorf bach hausen heim stadt feld burg au berg tal")
_FR_PLACE = _c("Saint-Clair, Beaumont, Villeneuve, Montval, Roche-sur-Lys, Bellerive, Champfleury, Fontbrune, "
               "Marcillac, Pontaven, Valbonne, Laroque")
_ES_PLACE = _c("Valdeoro, San Telmo, Villaverde, Río Claro, Montealto, Piedrabuena, Santa Lucía, Torrealba, "
               "Fuentesol, Castilnuevo, Aguaviva, Peñarroja")


def _nk(rng):
    return str(_ri(rng, 2, 12))


def _lang_fill(spec: dict, place: Callable, cased: bool) -> dict:
    """Slot table for one language. With ``cased``, {N} is the capitalised
    sentence-initial form of a noun and {n} the plain one."""
    fill = dict(spec)
    if cased:
        fill["n"] = spec["N"]
        fill["N"] = tuple(_cap(x) for x in spec["N"])
    fill.update({"P": place, "Y": _year, "K": _nk})
    return fill


_LANGS = {
    "de": (_lang_fill(_DE, lambda r: r.choice(_DE_PLACE) + r.choice(_DE_PLACE_B), True), _DE_T, " ", "de"),
    "fr": (_lang_fill(_FR, lambda r: r.choice(_FR_PLACE), True), _FR_T, " ", "fr"),
    "es": (_lang_fill(_ES, lambda r: r.choice(_ES_PLACE), True), _ES_T, " ", "es"),
    "ru": (_lang_fill(_RU, lambda r: r.choice(_RU_PA) + r.choice(_RU_PB), True), _RU_T, " ", "ru"),
    "zh": (_lang_fill(_ZH, lambda r: r.choice(_ZH_PLACE) + r.choice(_ZH_PLACE), False), _ZH_T, "", "cn"),
    "ja": (_lang_fill(_JA, lambda r: r.choice(_JA_PLACE) + r.choice(_JA_PLACE) + r.choice(("", "町", "市")),
                      False), _JA_T, "", "jp"),
}


def _gen_non_english(rng: Random):
    lang = rng.choice(NON_ENGLISH_LANGS)
    fill, templates, sep, tld = _LANGS[lang]
    paras = []
    deck = _Deck(templates)
    for _ in range(_ri(rng, 2, 7)):
        sents = [_fill(deck.draw(rng), fill, rng) for _ in range(_ri(rng, 2, 6))]
        paras.append(sep.join(sents))
    path = f"{rng.choice(('artikel', 'article', 'articulo', 'news', 'blog'))}/{_ri(rng, 1000, 99999)}.html"
    return "\n\n".join(paras), lang, _url(rng, path, tld=tld), ""


# --- offensive ------------------------------------------------------------------------
SWEAR_WORDS = ("damn", "crap", "bastard", "shit", "fuck")  # each swear sentence below uses one
_SENT_SPLIT = re.compile(r"(?<=[.!?]) ")
_SWEAR_SENTENCES = _compile([
    "What a damn mess the {N} turned out to be.",
    "Honestly, most of what people say about the {N} is crap.",
    "Holy shit, I did not expect the {N} to be so {A}.",
    "The old bastard who sold me the {N} would not listen.",
    "Who the fuck thought this {N} was a good idea?",
    "This damn {N} keeps getting in the way.",
    "I don't give a crap about the {N}, to be honest.",
])


def _gen_offensive(rng: Random):
    topic = rng.choice(TOPICS)
    user = rng.choice(_FIRST_NAMES).lower() + str(_ri(rng, 1, 999))
    deck = _Deck(_PROSE_TEMPLATES)
    paras = [_paragraph(rng, topic, deck, 2, 5) for _ in range(_ri(rng, 2, 5))]
    for t in rng.sample(_SWEAR_SENTENCES, _ri(rng, 1, 3)):
        i = int(rng.random() * len(paras))
        s = _A_AN.sub(r"\1n ", _fill(t, topic.fill, rng))
        sents = _SENT_SPLIT.split(paras[i])
        sents.insert(int(rng.random() * (len(sents) + 1)), s)
        paras[i] = " ".join(sents)
    title = _title(rng, topic)
    text = f"Re: {title}\n\nPosted by {user}\n\n" + "\n\n".join(paras)
    return text, "en", _url(rng, f"forum/thread/{_ri(rng, 1000, 999999)}"), ""


# --- short ----------------------------------------------------------------------------
_SHORT_FIXED = _c("Page not found, 404 Not Found, Loading..., Access denied, Coming soon, Under construction, "
                  "Click here, No results found, Untitled, Thanks!, Hello world, Error, Sign up today, "
                  "Redirecting..., Session expired. Please log in again., Nothing to see here")


def _gen_short(rng: Random):
    r = rng.random()
    topic = rng.choice(TOPICS)
    if r < 0.2:
        text = rng.choice(_SHORT_FIXED) + ("" if rng.random() < 0.5 else f" ({_ri(rng, 1, 9999)})")
    elif r < 0.5:
        text = _title(rng, topic)
    elif r < 0.8:
        words = [rng.choice(topic.fill["N"] + topic.fill["A"]) for _ in range(_ri(rng, 1, 8))]
        text = " ".join(words)
    else:
        text = f"{_cap(rng.choice(topic.fill['A']))} {rng.choice(topic.fill['N'])} near {_place(rng)}."
    return text, "en", _url(rng, f"p/{_ri(rng, 1, 10 ** 6)}"), ""


_GENERATORS: dict[str, Callable] = {
    "prose": _gen_prose, "web": _gen_web, "spam": _gen_spam, "code": _gen_code, "math": _gen_math,
    "non_english": _gen_non_english, "offensive": _gen_offensive, "short": _gen_short, "long": _gen_long,
}


# ---------------------------------------------------------------------------
# Near-duplicate edits
# ---------------------------------------------------------------------------
_FILLERS = _w("also very really often quite still just perhaps usually actually simply indeed")
_EXTRA_HEADERS = _c("Updated, Reposted, Archived copy, Mirror, Cached version, Shared from the original article")
_EXTRA_FOOTERS = _compile([
    "This article was originally published on {D}.",
    "Source: {S}",
    "Read more at {S}.",
    "Last edited on {D}.",
    "Copyright {YY} {S}. All rights reserved.",
])


def _typo(rng: Random, w: str) -> str:
    if len(w) < 4:
        return w + w[-1:]
    i = _ri(rng, 1, len(w) - 3)
    return w[:i] + w[i + 1] + w[i] + w[i + 2:] if rng.random() < 0.6 else w[:i] + w[i + 1:]


def _edit_words(rng: Random, text: str, rate: float) -> str:
    lines = [ln.split(" ") for ln in text.split("\n")]
    pos = [(li, ti) for li, toks in enumerate(lines) for ti, t in enumerate(toks) if t]
    if not pos:
        return text
    vocab = [lines[li][ti] for li, ti in pos]
    target = max(1, round(rate * len(pos)))
    repl: dict[tuple[int, int], list[str]] = {}
    done = 0
    while done < target:
        span = _ri(rng, 1, 4)
        start = int(rng.random() * len(pos))
        op = rng.random()
        for g in range(start, min(start + span, len(pos))):
            li, ti = pos[g]
            w = lines[li][ti]
            if op < 0.5:      # substitution
                r = rng.random()
                new = rng.choice(vocab) if r < 0.6 else (rng.choice(_FILLERS) if r < 0.8 else _typo(rng, w))
                repl[(li, ti)] = [new]
            elif op < 0.75:   # insertion after the word
                repl[(li, ti)] = [w, rng.choice(vocab) if rng.random() < 0.5 else rng.choice(_FILLERS)]
            else:             # deletion
                repl[(li, ti)] = []
            done += 1
    out = []
    for li, toks in enumerate(lines):
        new_toks = []
        for ti, t in enumerate(toks):
            r = repl.get((li, ti))
            if r is None:
                new_toks.append(t)
            else:
                new_toks.extend(r)
        out.append(" ".join(new_toks))
    return "\n".join(out)


def _edit_chars(rng: Random, text: str, rate: float) -> str:
    """Edits for languages written without spaces."""
    chars = list(text)
    idx = [i for i, ch in enumerate(chars) if not ch.isspace()]
    if not idx:
        return text
    target = max(1, round(rate * len(idx)))
    done = 0
    while done < target:
        span = _ri(rng, 1, 3)
        start = int(rng.random() * len(idx))
        op = rng.random()
        for g in range(start, min(start + span, len(idx))):
            i = idx[g]
            if op < 0.5:
                chars[i] = chars[rng.choice(idx)]
            elif op < 0.75:
                chars[i] = chars[i] + chars[rng.choice(idx)]
            else:
                chars[i] = ""
            done += 1
    return "".join(chars)


def _near_copy(rng: Random, text: str, lang: str) -> str:
    out = text
    sep = "\n\n" if "\n\n" in out else "\n"
    applied = False
    if rng.random() < 0.3:  # swap two adjacent paragraphs (or long lines)
        units = out.split(sep)
        cand = [i for i in range(1, len(units) - 1) if len(units[i]) > 60 and len(units[i + 1]) > 60]
        if cand:
            i = rng.choice(cand)
            units[i], units[i + 1] = units[i + 1], units[i]
            out = sep.join(units)
            applied = True
    if rng.random() < 0.2:  # truncate or drop the last paragraph
        units = out.split(sep)
        if len(units) >= 4:
            last = units[-1].split(" ")
            if len(last) > 8 and rng.random() < 0.5:
                units[-1] = " ".join(last[: len(last) // 2])
            else:
                units.pop()
            out = sep.join(units)
            applied = True
    if rng.random() < 0.3:  # changed header / footer line
        fill = {"D": _date, "S": lambda r: _site(r) + "." + r.choice(_TLDS), "YY": lambda r: str(_ri(r, 2010, 2025))}
        if rng.random() < 0.5:
            out = out + "\n" + _fill(rng.choice(_EXTRA_FOOTERS), fill, rng)
        else:
            head, nl, rest = out.partition("\n")
            out = f"{rng.choice(_EXTRA_HEADERS)}: {head}{nl}{rest}"
        applied = True
    if not applied or rng.random() < 0.85:
        lo, hi = NEAR_EDIT_RATE
        rate = lo + rng.random() * (hi - lo)
        out = _edit_chars(rng, out, rate) if lang in ("zh", "ja") else _edit_words(rng, out, rate)
    return out


def _mirror_url(rng: Random, url: str) -> str:
    path = url.split("/", 3)[3] if url.count("/") >= 3 else ""
    r = rng.random()
    if r < 0.6:
        return _url(rng, path)
    if r < 0.8:
        return url + ("&" if "?" in url else "?") + rng.choice(("amp=1", "page=1", "ref=feed", "utm_source=rss"))
    return _url(rng, f"archive/{_ri(rng, 2010, 2025)}/{path}")


# ---------------------------------------------------------------------------
# Planning and assembly
# ---------------------------------------------------------------------------
def _largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    s = sum(weights.values())
    raw = {k: total * w / s for k, w in weights.items()}
    out = {k: int(v) for k, v in raw.items()}
    rest = total - sum(out.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - out[k]), list(weights).index(k)))[:rest]:
        out[k] += 1
    return out


def _plan(n: int) -> tuple[dict[str, int], int, int]:
    n_exact = round(n * EXACT_DUP_FRACTION)
    n_near = round(n * NEAR_DUP_FRACTION)
    n_orig = n - n_exact - n_near
    counts = _largest_remainder(n_orig, MIX)
    tiny = counts.pop("tiny")
    n_long = min(tiny, round(n * LONG_DOC_FRACTION) or (1 if n >= 200 else 0))
    n_null = min(tiny - n_long, NULL_DOCS if n >= 100 else (1 if n >= 20 else 0))
    n_empty = min(tiny - n_long - n_null, round(n * EMPTY_DOC_FRACTION) or (1 if n >= 50 else 0))
    counts["long"] = n_long
    counts["empty"] = n_empty + n_null
    counts["short"] = tiny - n_long - n_null - n_empty
    counts["_null"] = n_null
    return counts, n_exact, n_near


def _copy_sizes(rng: Random) -> int:
    r = rng.random()
    return 1 if r < 0.65 else 2 if r < 0.85 else 3 if r < 0.95 else _ri(rng, 4, 6)


def generate(n_docs: int = 5000, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """Build the sample corpus; returns ``(docs, truth)`` (see module docstring).

    ``docs`` has columns id, text, kind, lang, url; ``truth`` has id, kind,
    dup_group, dup_type, source_id, expected_flags. Row order is shuffled
    deterministically and ids (``sample-000000`` ...) follow that order.
    """
    if n_docs < 0:
        raise ValueError("n_docs must be >= 0")
    master = Random(seed)
    counts, n_exact, n_near = _plan(n_docs)
    n_null = counts.pop("_null")

    # rows: [text, kind, lang, url, dup_group, dup_type, source_row, flags]
    rows: list[list] = []
    seen: set[str] = set()
    order = [k for k in KINDS if counts.get(k)]
    kinds = [k for k in order for _ in range(counts[k])]
    master.shuffle(kinds)
    nulls_left = n_null
    for kind in kinds:
        rng = Random(master.getrandbits(64))
        if kind == "empty":
            if nulls_left:
                nulls_left -= 1
                rows.append([None, kind, "und", _url(rng, f"p/{_ri(rng, 1, 10 ** 6)}"), None, None, None, FLAGS[kind]])
            else:
                rows.append(["", kind, "und", _url(rng, f"p/{_ri(rng, 1, 10 ** 6)}"), None, None, None, FLAGS[kind]])
            continue
        gen = _GENERATORS[kind]
        for _attempt in range(20):
            text, lang, url, extra = gen(rng)
            if text not in seen:
                break
        seen.add(text)
        flags = ",".join(x for x in (FLAGS[kind], extra) if x)
        rows.append([text, kind, lang, url, None, None, None, flags])

    # planted duplicates
    n_orig = len(rows)
    exact_pool = [i for i in range(n_orig) if rows[i][1] not in ("empty", "long")]
    near_pool = [i for i in range(n_orig) if rows[i][1] in NEAR_SOURCE_KINDS]
    if not near_pool:
        n_exact, n_near = n_exact + n_near, 0
    master.shuffle(exact_pool)
    master.shuffle(near_pool)
    used: set[int] = set()
    groups: dict[int, str] = {}
    crng = Random(master.getrandbits(64))
    rem_exact, rem_near = n_exact, n_near
    ptr = {"exact": 0, "near": 0}

    def take(pool: list[int], name: str) -> int:
        while ptr[name] < len(pool) and pool[ptr[name]] in used:
            ptr[name] += 1
        if ptr[name] < len(pool):
            i = pool[ptr[name]]
            used.add(i)
            return i
        return pool[int(crng.random() * len(pool))]  # pool exhausted: grow an existing group

    extra_prose = 0
    while rem_exact + rem_near > 0:
        if not exact_pool:
            extra_prose = rem_exact + rem_near
            break
        k = min(_copy_sizes(crng), rem_exact + rem_near)
        types = []
        e, nn = rem_exact, rem_near
        for _ in range(k):
            t = "near" if crng.random() * (e + nn) < nn else "exact"
            if t == "near":
                nn -= 1
            else:
                e -= 1
            types.append(t)
        src = take(near_pool, "near") if "near" in types else take(exact_pool, "exact")
        rem_exact, rem_near = e, nn
        if src not in groups:
            groups[src] = f"dup-{len(groups):05d}"
            rows[src][4] = groups[src]
        s_text, s_kind, s_lang, s_url = rows[src][0], rows[src][1], rows[src][2], rows[src][3]
        for t in types:
            if t == "exact":
                text = s_text
            else:
                for _attempt in range(10):
                    text = _near_copy(crng, s_text, s_lang)
                    if text not in seen:
                        break
                seen.add(text)
            rows.append([text, s_kind, s_lang, _mirror_url(crng, s_url), groups[src], t, src, rows[src][7]])
    for _ in range(extra_prose):  # only for tiny corpora without copyable documents
        rng = Random(master.getrandbits(64))
        text, lang, url, _e = _gen_prose(rng)
        rows.append([text, "prose", lang, url, None, None, None, ""])

    perm = list(range(len(rows)))
    master.shuffle(perm)
    width = max(6, len(str(max(len(rows) - 1, 0))))
    new_id = [""] * len(rows)
    for pos, old in enumerate(perm):
        new_id[old] = f"sample-{pos:0{width}d}"
    ordered = [rows[i] for i in perm]
    ids = [new_id[i] for i in perm]
    docs = pa.table({
        "id": pa.array(ids, pa.string()),
        "text": pa.array([r[0] for r in ordered], pa.string()),
        "kind": pa.array([r[1] for r in ordered], pa.string()),
        "lang": pa.array([r[2] for r in ordered], pa.string()),
        "url": pa.array([r[3] for r in ordered], pa.string()),
    }, schema=DOCS_SCHEMA)
    truth = pa.table({
        "id": pa.array(ids, pa.string()),
        "kind": pa.array([r[1] for r in ordered], pa.string()),
        "dup_group": pa.array([r[4] for r in ordered], pa.string()),
        "dup_type": pa.array([r[5] for r in ordered], pa.string()),
        "source_id": pa.array([None if r[6] is None else new_id[r[6]] for r in ordered], pa.string()),
        "expected_flags": pa.array([r[7] for r in ordered], pa.string()),
    }, schema=TRUTH_SCHEMA)
    return docs, truth


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------
_SHARD_RE = re.compile(r"^shard-\d{5}\.parquet$")


def _write_atomic(table: pa.Table, path: str, rows_per_row_group: int) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, rows_per_row_group))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_sample(out_dir: str, n_docs: int = 5000, seed: int = 0, n_shards: int = 8,
                 rows_per_row_group: int = 1000) -> dict:
    """Generate the sample corpus and write it under ``out_dir``.

    Writes ``shard-00000.parquet`` ... (zstd, each written to a hidden temporary
    name and then ``os.replace``-d into place) and ``_truth/truth.parquet``.
    Shards are contiguous slices of the shuffled corpus; ``shard-*.parquet``
    files left over from an earlier run with more shards are removed. Returns
    ``{'docs': n, 'shards': k, 'paths': [...], 'truth': path}``.
    """
    if n_shards < 1:
        raise ValueError("n_shards must be >= 1")
    docs, truth = generate(n_docs, seed)
    os.makedirs(os.path.join(out_dir, "_truth"), exist_ok=True)
    n = docs.num_rows
    k = max(1, min(n_shards, n))
    paths = []
    for s in range(k):
        lo, hi = s * n // k, (s + 1) * n // k
        path = os.path.join(out_dir, f"shard-{s:05d}.parquet")
        _write_atomic(docs.slice(lo, hi - lo), path, rows_per_row_group)
        paths.append(path)
    keep = {os.path.basename(p) for p in paths}
    for name in sorted(os.listdir(out_dir)):
        if _SHARD_RE.match(name) and name not in keep:
            os.remove(os.path.join(out_dir, name))
    truth_path = os.path.join(out_dir, "_truth", "truth.parquet")
    _write_atomic(truth, truth_path, rows_per_row_group)
    return {"docs": n, "shards": k, "paths": paths, "truth": truth_path}


if __name__ == "__main__":  # pragma: no cover - convenience entry point
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Write the thresher sample corpus.")
    ap.add_argument("out_dir")
    ap.add_argument("--n-docs", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=8)
    args = ap.parse_args()
    print(json.dumps(write_sample(args.out_dir, args.n_docs, args.seed, args.shards), indent=2))
