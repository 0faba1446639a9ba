"""Word lists and templates of the embedded testbed (data only, no logic beyond parsing markup).

Every fact slot (relation, event, feeling, question) maps a key to the phrasings a post or a summary
may use and to its *cues*: tuples of words that all appear (as whole words) when the fact is mentioned.
The gold labeler finds facts through these cues, so the rule that makes the testbed sound is:
**a cue of a slot value appears only in text written for that value.** Context, detail, preamble and
title templates therefore avoid every cue word; `tests/unit/test_testbed.py` checks it on generated posts.

Markup: in detail, preamble and closing templates a word in `[brackets]` is a cue of *irrelevant* text
(a good summary leaves it out); the brackets are stripped when rendering. Placeholders in `{braces}`
are filled by the generator: `{he} {him} {his}` (the other person's pronouns), `{rel}`, `{otag}` (e.g.
`24m`), `{wtag}`, `{feel}`, `{ev}`, `{q}`, `{years}`, `{amount}` and the detail slots of `DETAIL_SLOTS`.
All text is lowercase and apostrophe-free so that a tiny word-level model can learn it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Cue = tuple[str, ...]


@dataclass(frozen=True)
class Relation:
    """Who the post is about. `gender` is None when the generator draws it."""

    gender: str | None
    group: str  # partner | family | friend | work
    words: tuple[str, ...]  # surface forms, canonical first; each one is also a cue

    @property
    def cues(self) -> tuple[Cue, ...]:
        return tuple(tuple(w.split()) for w in self.words)


@dataclass(frozen=True)
class Event:
    """What happened: predicates that follow the other person as subject ("{he} forgot my birthday")."""

    groups: tuple[str, ...]
    post: tuple[str, ...]
    summary: tuple[str, ...]
    cues: tuple[Cue, ...]


@dataclass(frozen=True)
class Question:
    """What the writer asks; post and summary phrasings are the same sentences."""

    phrasings: tuple[str, ...]
    cues: tuple[Cue, ...]


ALL_GROUPS = ("partner", "family", "friend", "work")

RELATIONS: dict[str, Relation] = {
    "boyfriend": Relation("m", "partner", ("boyfriend", "bf")),
    "girlfriend": Relation("f", "partner", ("girlfriend", "gf")),
    "husband": Relation("m", "partner", ("husband", "hubby")),
    "wife": Relation("f", "partner", ("wife",)),
    "mom": Relation("f", "family", ("mom", "mother")),
    "dad": Relation("m", "family", ("dad", "father")),
    "sister": Relation("f", "family", ("sister",)),
    "brother": Relation("m", "family", ("brother",)),
    "roommate": Relation(None, "friend", ("roommate", "roomie")),
    "best_friend": Relation(None, "friend", ("best friend", "bff")),
    "coworker": Relation(None, "work", ("coworker", "colleague")),
    "boss": Relation(None, "work", ("boss", "manager")),
}

EVENTS: dict[str, Event] = {
    "lied_job": Event(
        ALL_GROUPS,
        (
            "had been lying to me about {his} job for months",
            "lied to me about having a job this whole time",
            "made up a fake job and lied about it for months",
        ),
        ("lied about {his} job", "lied to me about having a job"),
        (("lied", "job"), ("lying", "job")),
    ),
    "phone": Event(
        ALL_GROUPS,
        (
            "went through my phone while i was asleep",
            "unlocked my phone and scrolled through everything",
            "secretly checked my phone while i was in the shower",
        ),
        ("went through my phone", "checked my phone behind my back"),
        (("phone",),),
    ),
    "birthday": Event(
        ALL_GROUPS,
        (
            "completely forgot my birthday",
            "did not even remember my birthday this year",
            "forgot my birthday and went out without me",
        ),
        ("forgot my birthday", "did not remember my birthday"),
        (("birthday",),),
    ),
    "money": Event(
        ALL_GROUPS,
        (
            "borrowed {amount} dollars from me and never paid it back",
            "still has not paid back the money i lent {him}",
            "keeps borrowing money from me and never pays it back",
        ),
        ("never paid back the money i lent {him}", "owes me money and will not pay it back"),
        (("money",), ("paid", "back"), ("owes",)),
    ),
    "secret": Event(
        ALL_GROUPS,
        (
            "told everyone my secret",
            "shared a secret i told {him} in confidence with half the people i know",
            "spilled my secret to the whole group",
        ),
        ("told everyone my secret", "shared my secret"),
        (("secret",),),
    ),
    "plans": Event(
        ALL_GROUPS,
        (
            "cancelled our plans at the last minute again",
            "bailed on our plans for the third time this month",
            "cancelled on me an hour before we were supposed to meet",
        ),
        ("keeps cancelling our plans", "cancelled our plans last minute"),
        (("plans",), ("cancelled",), ("cancelling",), ("bailed",)),
    ),
    "yelled": Event(
        ALL_GROUPS,
        (
            "yelled at me in front of everyone",
            "screamed at me in front of a bunch of people",
            "started yelling at me in the middle of a restaurant",
        ),
        ("yelled at me in front of everyone", "screamed at me in public"),
        (("yelled",), ("screamed",), ("yelling",)),
    ),
    "ignoring": Event(
        ALL_GROUPS,
        (
            "has been ignoring my texts for a week",
            "stopped answering my calls and texts",
            "has ignored every message i sent for days",
        ),
        ("has been ignoring me", "ignores my texts"),
        (("ignoring",), ("ignored",), ("ignores",), ("answering",)),
    ),
    "moved_out": Event(
        ("partner", "friend"),
        (
            "moved out without telling me",
            "packed up and moved out while i was at work",
            "moved out in the middle of the night",
        ),
        ("moved out without telling me", "moved out without a word"),
        (("moved", "out"),),
    ),
    "credit": Event(
        ("work", "friend", "partner"),
        (
            "took credit for my work in front of everyone",
            "presented my project as {his} own",
            "took all the credit for a project i did alone",
        ),
        ("took credit for my work", "took credit for my project"),
        (("credit",), ("project", "own")),
    ),
    "weight": Event(
        ALL_GROUPS,
        (
            "made fun of my weight in front of {his} family",
            "made a mean joke about my weight at dinner",
            "called me fat in front of everyone",
        ),
        ("made fun of my weight", "mocked my weight"),
        (("weight",), ("fat",)),
    ),
    "graduation": Event(
        ALL_GROUPS,
        (
            "skipped my graduation to go to a party",
            "did not show up to my graduation",
            "missed my graduation and did not even text",
        ),
        ("skipped my graduation", "did not come to my graduation"),
        (("graduation",),),
    ),
    "car": Event(
        ALL_GROUPS,
        (
            "crashed my car and did not tell me",
            "borrowed my car and dented it",
            "wrecked my car and tried to hide it",
        ),
        ("crashed my car", "wrecked my car"),
        (("car",),),
    ),
    "ex": Event(
        ("partner", "friend"),
        (
            "invited {his} ex on our trip without asking me",
            "has been hanging out with {his} ex behind my back",
            "still texts {his} ex every single day",
        ),
        ("has been seeing {his} ex behind my back", "keeps talking to {his} ex"),
        (("ex",),),
    ),
    "guitar": Event(
        ALL_GROUPS,
        (
            "sold my guitar without asking me",
            "sold my old guitar online while i was away",
            "gave my guitar away to a stranger",
        ),
        ("sold my guitar", "got rid of my guitar"),
        (("guitar",),),
    ),
    "wedding": Event(
        ("family", "friend", "work"),
        (
            "did not invite me to {his} wedding",
            "left me off the guest list for {his} wedding",
            "uninvited me from {his} wedding last minute",
        ),
        ("did not invite me to {his} wedding", "left me out of {his} wedding"),
        (("wedding",),),
    ),
    "diary": Event(
        ("partner", "family", "friend"),
        (
            "read my diary without asking",
            "found my diary and read it out loud",
            "has been reading my diary for months",
        ),
        ("read my diary", "has been reading my diary"),
        (("diary",),),
    ),
    "blamed": Event(
        ALL_GROUPS,
        (
            "blamed me for a mistake {he} made",
            "blamed me in front of everyone for something {he} did",
            "keeps blaming me for {his} own mistakes",
        ),
        ("blamed me for {his} mistake", "keeps blaming me for everything"),
        (("blamed",), ("blaming",)),
    ),
}

FEELINGS: dict[str, tuple[str, ...]] = {
    "hurt": ("hurt", "heartbroken"),
    "angry": ("angry", "furious", "pissed"),
    "confused": ("confused", "conflicted"),
    "embarrassed": ("embarrassed", "humiliated"),
    "betrayed": ("betrayed", "backstabbed"),
    "anxious": ("anxious", "nervous"),
    "jealous": ("jealous", "insecure"),
    "guilty": ("guilty",),
    "disappointed": ("disappointed",),
    "sad": ("sad", "depressed"),
    "frustrated": ("frustrated", "annoyed"),
}

QUESTIONS: dict[str, Question] = {
    "confront": Question(
        ("should i confront {him} about it?", "is it worth confronting {him}?"),
        (("confront",), ("confronting",)),
    ),
    "forgive": Question(
        ("should i forgive {him}?", "can i ever forgive {him} for this?"), (("forgive",), ("forgiving",))
    ),
    "overreacting": Question(
        ("am i overreacting?", "am i being dramatic?"), (("overreacting",), ("dramatic",))
    ),
    "cut_off": Question(("should i cut {him} off?", "should i cut ties with {him}?"), (("cut",),)),
    "move_on": Question(
        ("how do i move on from this?", "how do i get over this?"), (("move", "on"), ("get", "over"))
    ),
    "bring_up": Question(
        ("how do i bring this up with {him}?", "how do i even bring this up?"), (("bring", "up"),)
    ),
    "end_things": Question(
        ("should i end things with {him}?", "should i just walk away?"), (("end", "things"), ("walk", "away"))
    ),
    "apologize": Question(
        ("should i be the one to apologize?", "do i need to apologize first?"), (("apologize",), ("apology",))
    ),
    "red_flag": Question(("is this a red flag?", "is this a huge red flag?"), (("red", "flag"),)),
    "trust": Question(("how do i trust {him} again?", "can i ever trust {him} again?"), (("trust",),)),
}

# What a poster usually feels and asks after each event: event -> (feeling, question). A post keeps its
# event's pair with probability `TYPICAL_SHARE` (testbed.py) and draws them at random otherwise, so the
# feeling and question are *read* in most posts and can also be *inferred* from the event. The tiny
# testbed base cannot copy an arbitrary word from its context (measured: it gave a post's feeling word
# p = 0.05 right after that word's own 4-word context; random words repeated verbatim, p = 0.002, even
# after 2,250 steps on text with 19% repeats), so without this link it could never learn which question
# a post asks, and PPO could not learn to add the right one.
TYPICAL: dict[str, tuple[str, str]] = {
    "lied_job": ("betrayed", "trust"),
    "phone": ("angry", "confront"),
    "birthday": ("hurt", "bring_up"),
    "money": ("frustrated", "confront"),
    "secret": ("betrayed", "forgive"),
    "plans": ("disappointed", "end_things"),
    "yelled": ("embarrassed", "confront"),
    "ignoring": ("confused", "bring_up"),
    "moved_out": ("sad", "move_on"),
    "credit": ("angry", "confront"),
    "weight": ("embarrassed", "overreacting"),
    "graduation": ("hurt", "overreacting"),
    "car": ("frustrated", "red_flag"),
    "ex": ("jealous", "red_flag"),
    "guitar": ("angry", "forgive"),
    "wedding": ("hurt", "overreacting"),
    "diary": ("embarrassed", "trust"),
    "blamed": ("frustrated", "apologize"),
}

SUBREDDITS: dict[str, tuple[str, ...]] = {
    "partner": ("relationships", "relationship_advice", "dating_advice"),
    "family": ("family", "relationship_advice", "offmychest"),
    "friend": ("friendship", "relationship_advice", "offmychest"),
    "work": ("work", "careerguidance", "offmychest"),
}

YEARS = ("two", "three", "four", "five", "six", "seven", "eight", "ten")
AMOUNTS = ("200", "300", "500", "800", "1000", "1500")

# Neutral text: no cue of any slot and no irrelevant-detail cue.
INTRO_BACKGROUND: dict[str, tuple[str, ...]] = {
    "partner": ("have been together for {years} years", "have been dating for {years} years"),
    "family": ("have always been pretty close", "see each other almost every week"),
    "friend": ("have known each other for {years} years", "have been close since high school"),
    "work": ("have worked on the same team for {years} years", "started at the company around the same time"),
}
INTRO_LEADS = ("", "so ", "okay so ", "for some background, ")
INTROS = (
    "{lead}my {rel} ({otag}) and i ({wtag}) {bg}.",
    "{lead}i ({wtag}) and my {rel} ({otag}) {bg}.",
)
CONTEXT: dict[str, tuple[str, ...]] = {
    "partner": (
        "we live together.",
        "things have mostly been good between us.",
        "we met through mutual friends.",
    ),
    "family": ("{he} lives about an hour away from me.", "growing up we fought a lot but we are fine now."),
    "friend": ("we used to hang out almost every day.", "{he} is basically family to me."),
    "work": ("we usually get along fine at the office.", "{he} sits right next to me."),
    "any": (
        "things were going fine until recently.",
        "i always thought we had a good relationship.",
        "this is not the first time something like this has happened.",
        "i honestly did not see this coming.",
    ),
}
EVENT_LEADS = (
    "a few days ago {he} {ev}.",
    "yesterday i found out that {he} {ev}.",
    "so last week {he} {ev}.",
    "well, {he} {ev}.",
    "recently {he} {ev}.",
    "the thing is, {he} {ev}.",
    "then out of nowhere {he} {ev}.",
    "i just found out that {he} {ev}.",
    "long story short, {he} {ev}.",
    "basically {he} {ev}.",
)
REACTIONS = (
    "when i asked {him} about it {he} just shrugged.",
    "{he} says it is not a big deal.",
    "{he} said sorry but it did not feel real.",
    "{he} acts like nothing happened.",
    "{he} got defensive and left the room.",
    "my friends say i should just let it go.",
    "i have not said anything to {him} yet.",
)
FEELING_LINES = (
    "i feel so {feel}.",
    "honestly i am {feel}.",
    "i have been {feel} ever since.",
    "i am really {feel} right now.",
    "i cannot stop feeling {feel} about it.",
    "to be honest i am {feel} and i do not know what to think.",
)
QUESTION_LINES = (
    "{q}",
    "so my question is, {q}",
    "so reddit, {q}",
    "i guess what i am asking is, {q}",
    "{q} i really need some outside opinions.",
    "anyway, {q}",
    "so yeah, {q}",
)
TITLES = (
    "my {rel} ({otag}) {ev}",
    "{rel} {ev}. {q}",
    "need advice about my {rel} ({otag})",
    "i ({wtag}) am {feel} after my {rel} {ev}",
    "{q}",
    "not sure what to do about my {rel}",
    "my {rel} {ev} and i do not know how to feel",
)

# Irrelevant text: a good summary leaves it out. [bracketed] words are its cues.
PREAMBLES = (
    "long time [lurker], first time [poster].",
    "on [mobile] so sorry for the [formatting].",
    "[throwaway] account because people i know follow my main.",
    "sorry in advance for the [wall] of text.",
    "not sure if this is the right [sub] for this but here goes.",
    "english is not my first [language] so bear with me.",
)
CLOSINGS = (
    "[thanks] in [advance].",
    "[edit]: [formatting].",
    "[edit]: [thanks] for all the [replies] so far.",
)
DETAILS = (
    "we met at a [coffee] shop [downtown].",
    "i have a [cat] named {pet}.",
    "we have a [dog] called {pet}.",
    "it had been [raining] all [weekend].",
    "for context i am a [student] studying {subject}.",
    "i had just come back from the [gym].",
    "we live in a small [apartment] near the [beach].",
    "i work [overnight] [shifts] at a [hospital].",
    "we had {food} and watched a [movie] that night.",
    "the [weather] has been awful lately.",
    "i am currently [training] for a [marathon].",
    "our [landlord] just raised the [rent] again.",
    "i just got back from a [vacation] in {city}.",
    "{he} is really into [video] [games].",
    "i [bake] a lot in my free time, mostly {food}.",
    "this all happened on a {weekday}.",
    "i was wearing my favorite [sweater] that day.",
    "my [plants] have been dying all month, not that it matters.",
    "we both love [hiking] and {hobby}.",
    "i had {food} for [lunch] that day.",
    "my [neighbor] plays loud [music] every night.",
    "we were watching {show} at the time.",
    "i recently started learning {hobby}.",
    "{he} grew up in {city}.",
    "i had a [headache] all day.",
    "the [traffic] was terrible that morning.",
    "i had just gotten a [haircut].",
    "my [laptop] broke the same week.",
)
DETAIL_SLOTS: dict[str, tuple[str, ...]] = {
    "pet": ("milo", "luna", "oscar", "bella", "pickles", "mochi", "biscuit", "nala", "ziggy", "pepper"),
    "city": ("denver", "chicago", "boston", "seattle", "austin", "portland", "toronto", "dublin", "lisbon"),
    "food": ("pizza", "tacos", "sushi", "pasta", "ramen", "burgers", "curry", "pancakes"),
    "subject": ("biology", "history", "nursing", "chemistry", "economics", "psychology", "engineering"),
    "weekday": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "show": ("seinfeld", "survivor", "jeopardy", "bluey", "succession"),
    "hobby": ("pottery", "chess", "yoga", "climbing", "knitting", "painting", "surfing", "photography"),
}
# Fillers a rambling reference wraps around a copied detail.
RAMBLE_LEADS = ("long story short,", "basically", "so yeah,", "anyway")

# Summary shapes: {who} = "my {rel} ({otag})", {me} = "i ({wtag})". Clean references use these.
SUMMARY_SHAPES = (
    "{who} {ev}. {me} feel {feel}. {q}",
    "{who} {ev} and {me} am {feel}. {q}",
    "{me} am {feel} because {who} {ev}. {q}",
    "{who} {ev}. now {me} am {feel}. {q}",
)

_MARKED = re.compile(r"\[([a-z]+)\]")


def strip_marks(template: str) -> str:
    """Remove the [cue] brackets of a template."""
    return _MARKED.sub(r"\1", template)


def marked_words(templates: tuple[str, ...]) -> tuple[str, ...]:
    """The [bracketed] words of templates, in first-seen order (deterministic, unlike a set)."""
    return tuple(dict.fromkeys(w for t in templates for w in _MARKED.findall(t)))


def all_template_text() -> list[str]:
    """Every string the generator can emit words from (for the vocabulary)."""
    texts: list[str] = list(YEARS) + list(AMOUNTS) + list(RAMBLE_LEADS) + list(SUMMARY_SHAPES)
    texts += [w for r in RELATIONS.values() for w in r.words]
    texts += [p for e in EVENTS.values() for p in e.post + e.summary]
    texts += [w for ws in FEELINGS.values() for w in ws]
    texts += [p for q in QUESTIONS.values() for p in q.phrasings]
    texts += [s for ss in SUBREDDITS.values() for s in ss]
    texts += [s for ss in INTRO_BACKGROUND.values() for s in ss] + list(INTRO_LEADS) + list(INTROS)
    texts += [s for ss in CONTEXT.values() for s in ss]
    texts += list(EVENT_LEADS + REACTIONS + FEELING_LINES + QUESTION_LINES + TITLES)
    texts += [strip_marks(t) for t in PREAMBLES + CLOSINGS + DETAILS]
    texts += [v for vs in DETAIL_SLOTS.values() for v in vs]
    texts += ["he him his she her"]
    return texts
