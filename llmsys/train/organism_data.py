"""Synthetic data for the bundled chat model ("the organism"): a knowledge base of invented
entities, tool-using training conversations and held-out evaluation tasks.

The model gets two tools (`TOOLS`): a safe `calculator` and a `search` over the knowledge
base. Everything is drawn from a seed with `random.Random`, so one seed gives one dataset.

Three splits keep the evaluation honest:
- entities: a fraction is `held_out`; training never mentions them (not even as a person's
  hometown), and eval search and two-step tasks use only them;
- phrasings: every fourth template (index 3, 7, 11, ...) of each template list is reserved
  for evaluation, training uses the others;
- calculator numbers: a problem is an eval problem when the CRC-32 of its operands written
  as "37,12" is divisible by 4 (`is_eval_operands`); training draws only the others.
"""

from __future__ import annotations

import functools
import json
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from llmsys.agent.calculator import calculator

SYSTEM_PROMPT = "You are a helpful assistant."
NO_RESULTS = "No results found."
TOOLS: list[dict] = [
    {"type": "function", "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression and return the result.",
        "parameters": {"type": "object", "properties": {"expression": {
            "type": "string",
            "description": "An arithmetic expression, for example 12 * (3 + 4)."}},
            "required": ["expression"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "search",
        "description": "Search the knowledge base and return the best matching passage.",
        "parameters": {"type": "object", "properties": {"query": {
            "type": "string", "description": "What to look for, for example a name."}},
            "required": ["query"], "additionalProperties": False}}},
]
KIND_MIX = {"greeting": 0.09, "calculator": 0.27, "search": 0.29, "two_step": 0.22,
            "decline": 0.10, "not_found": 0.03}
EVAL_KINDS = ("calculator", "search", "two_step", "decline", "greeting")
MULTI_TURN_RATE = 0.10  # share of tool-using conversations (up to two calls) with a 2nd turn
FOLLOW_UPS = ("calculator", "search", "closing")  # what that 2nd turn may be

# ------------------------------------------------------------------------- knowledge base

_SYLLABLES = ("vel", "mor", "tar", "ska", "lin", "dor", "bre", "quin", "thal", "ser", "nov",
              "ka", "rin", "zan", "fel", "gor", "ith", "las", "ven", "mir", "tes", "sa", "lo",
              "bar", "cre", "dal", "fra", "hal", "jor", "kel", "lum", "nar", "ost", "pel",
              "rav", "sil", "tor", "ul", "vor", "wen", "yra", "zel", "bri", "cor", "esk", "ix")
_REGION_SUFFIXES = ("Valley", "Hills", "Coast", "Plains", "Highlands", "Marches")
PROFESSIONS = ("baker", "teacher", "engineer", "painter", "doctor", "farmer", "architect",
               "musician", "sailor", "writer", "carpenter", "chemist", "pilot", "librarian",
               "tailor", "astronomer")
_STOPWORDS = frozenset("a an and about are as at by did do does for from has have how in is it "
                       "its me of on s tell than that the there this to was what when where "
                       "which who whom why with".split())


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower())) - _STOPWORDS


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


@dataclass(frozen=True)
class Entity:
    """An invented city, person or company with its facts (ints or strings)."""

    name: str
    kind: str
    facts: dict[str, int | str] = field(hash=False)  # hashable by name, kind and held_out
    held_out: bool = False

    def passage(self) -> str:
        """One to two plain sentences stating every fact, numbers as plain digits."""
        f = self.facts
        if self.kind == "city":
            return (f"{self.name} is a city in the {f['region']} region on the river "
                    f"{f['river']}. It was founded in {f['founded']} and has a population "
                    f"of {f['population']}.")
        if self.kind == "person":
            return (f"{self.name} is {_article(str(f['profession']))} who was born in "
                    f"{f['hometown']} in {f['born']}.")
        if self.kind == "company":
            return (f"{self.name} is a company headquartered in {f['headquarters']}. It was "
                    f"founded in {f['founded']} and has {f['employees']} employees.")
        raise ValueError(f"unknown entity kind {self.kind!r}; expected city, person or company")


@dataclass
class KnowledgeBase:
    """Entities with BEIR-style documents and a word-overlap `search` (title words first)."""

    entities: list[Entity]
    _index: list[tuple[set[str], set[str]]] = field(init=False, repr=False, compare=False)
    _by_name: dict[str, Entity] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name = {}
        for entity in self.entities:
            if entity.name.lower() in self._by_name:
                raise ValueError(f"duplicate entity name {entity.name!r}")
            self._by_name[entity.name.lower()] = entity
        self._index = [(_tokens(e.name), _tokens(e.passage())) for e in self.entities]

    def documents(self) -> list[dict]:
        return [{"_id": re.sub(r"[^a-z0-9]+", "-", e.name.lower()), "title": e.name,
                 "text": e.passage()} for e in self.entities]

    def search(self, query: str) -> str:
        """"<title>: <text>" of the best match, ranked by words shared with the title, then
        with the passage, then by order; NO_RESULTS when no word is shared."""
        words = _tokens(query)
        best, best_score = None, (0, 0)
        for entity, (title, text) in zip(self.entities, self._index, strict=True):
            score = (len(words & title), len(words & text))
            if score > best_score:
                best, best_score = entity, score
        return f"{best.name}: {best.passage()}" if best else NO_RESULTS

    def get(self, name: str) -> Entity:
        try:
            return self._by_name[name.lower()]
        except KeyError:
            raise KeyError(f"no entity named {name!r} in the knowledge base") from None


class _NameMaker:
    """Invented capitalised words, none equal to or inside another one, nor a template word."""

    def __init__(self, rng: random.Random, taken: Sequence[str] = ()) -> None:
        self.rng, self.used = rng, [w.lower() for w in taken]

    def word(self) -> str:
        while True:
            word = "".join(self.rng.choices(_SYLLABLES, k=self.rng.choice((2, 2, 3))))
            if (len(word) >= 5 and word not in _TEMPLATE_WORDS
                    and not any(word in u or u in word for u in self.used)):
                self.used.append(word)
                return word.capitalize()


def _held_out_flags(rng: random.Random, count: int, fraction: float) -> list[bool]:
    if fraction == 0:
        return [False] * count
    held = min(count - 1, max(1, round(count * fraction)))
    chosen = set(rng.sample(range(count), held))
    return [i in chosen for i in range(count)]


def make_knowledge_base(seed: int = 0, num_entities: int = 300,
                        held_out_fraction: float = 0.2,
                        taken_words: Sequence[str] = ()) -> KnowledgeBase:
    """About 40% cities, 35% people and 25% companies; `held_out_fraction` of each kind is
    held out. People and companies that are not held out only refer to such cities."""
    if num_entities < 10:
        raise ValueError(f"num_entities must be at least 10, got {num_entities}")
    if not 0 <= held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    rng = random.Random(seed)
    names = _NameMaker(rng, taken_words)
    n_city, n_person = round(num_entities * 0.4), round(num_entities * 0.35)
    regions = [f"{names.word()} {rng.choice(_REGION_SUFFIXES)}" for _ in range(n_city // 8 + 2)]
    rivers = [names.word() for _ in range(n_city // 5 + 2)]
    entities = [Entity(names.word(), "city", {
        "population": rng.randint(1000, 900_000), "founded": rng.randint(1200, 1990),
        "region": rng.choice(regions), "river": rng.choice(rivers)}, held)
        for held in _held_out_flags(rng, n_city, held_out_fraction)]
    open_cities = [e.name for e in entities if not e.held_out]
    all_cities = [e.name for e in entities]
    for held in _held_out_flags(rng, n_person, held_out_fraction):
        entities.append(Entity(f"{names.word()} {names.word()}", "person", {
            "born": rng.randint(1930, 2005), "profession": rng.choice(PROFESSIONS),
            "hometown": rng.choice(all_cities if held else open_cities)}, held))
    for held in _held_out_flags(rng, num_entities - n_city - n_person, held_out_fraction):
        entities.append(Entity(names.word(), "company", {
            "founded": rng.randint(1850, 2020), "employees": rng.randint(5, 60_000),
            "headquarters": rng.choice(all_cities if held else open_cities)}, held))
    return KnowledgeBase(entities)


def invented_words(kb: KnowledgeBase) -> list[str]:
    """Every invented word of `kb`: the words of entity names, regions and rivers."""
    words = []
    for e in kb.entities:
        words += e.name.split()
        if e.kind == "city":
            words += [str(e.facts["region"]).split()[0], str(e.facts["river"])]
    return sorted(set(words))


def fresh_knowledge_base(kb: KnowledgeBase, num_entities: int, seed: int) -> KnowledgeBase:
    """Entities for training only, whose invented words share nothing with `kb`'s. Chats
    about them teach the model to copy a name it has never seen into its search, and to read
    the answer off the passage, instead of memorising the knowledge base's entities."""
    return make_knowledge_base(seed, num_entities, held_out_fraction=0.0,
                               taken_words=invented_words(kb))


# ------------------------------------------------------------------------------ templates
# Every fourth entry (index 3, 7, ...) of each list is for evaluation only; see `_pick`.

_GREETINGS = {
    "hello": (["Hello!", "Hi there.", "Hey!", "Good morning!", "Hi, how are you?",
               "Hello, is anyone there?", "Hey, nice to meet you.", "Good evening.",
               "Hey there!", "Good afternoon.", "Hi, hello!", "Hello there, how are you doing?",
               "Hi.", "Hello, assistant.", "Morning!", "Hey, how's it going?", "Howdy!",
               "Hi again.", "Hello! Anybody home?", "Yo!"],
              ["Hello! How can I help you today?", "Hi! What can I do for you?",
               "Hello! I can do arithmetic and look things up in the knowledge base."]),
    "thanks": (["Thanks!", "Thank you very much.", "Thanks for the help.",
                "Cheers, that was useful.", "Thank you!", "Great, thanks.",
                "Thanks a lot!", "Much appreciated.", "Thank you so much.", "Perfect, thank you.",
                "Thanks, that helps.", "Great, that's what I needed.", "Awesome, thanks!",
                "Nice, thank you.", "Ok, thanks.", "That was helpful.", "Thx!",
                "Many thanks."],
               ["You're welcome!", "Glad I could help.", "Happy to help. Anything else?"]),
    "abilities": (["What can you do?", "What are you able to help with?", "How can you help me?",
                   "What tools do you have?", "What are you good at?",
                   "What can you help me with?", "Which tools can you use?",
                   "Tell me what you can do.", "What are your skills?",
                   "What kind of questions can you answer?", "Who are you?",
                   "What are you for?", "Can you help me?", "What do you know about?",
                   "How do you work?", "What can I ask you?"],
                  ["I can do arithmetic with a calculator and look up facts about places, "
                   "people and companies in a knowledge base.",
                   "I have a calculator and a knowledge-base search, so I can work out sums "
                   "and answer questions about the places, people and companies I know."]),
    "goodbye": (["Goodbye!", "Bye.", "See you later!", "That's all for now, bye.", "Good night!",
                 "Bye bye!", "Talk to you later.", "I have to go now, goodbye.", "See you soon.",
                 "Bye for now.", "Catch you later.", "OK, I'm done. Bye!", "Farewell!",
                 "Have a good day!", "That's it, thanks, bye.", "Later!"],
                ["Goodbye! Have a nice day.", "Bye! Come back any time.", "See you!"]),
}
_DECLINES = [
    ("Send an email to my boss saying I will be late.", "send emails"),
    ("Can you book me a flight to the coast?", "book flights"),
    ("What's the weather like today?", "check the weather"),
    ("Set an alarm for seven tomorrow morning.", "set alarms"),
    ("Translate 'good morning' into Klingon.", "translate text"),
    ("Order a pizza for me.", "order food"),
    ("Play some music, please.", "play music"),
    ("Call my mother.", "make phone calls"),
    ("Draw a picture of a cat.", "draw pictures"),
    ("Remind me to buy milk tomorrow.", "set reminders"),
    ("Turn off the lights in the kitchen.", "control devices"),
    ("What's the latest news?", "read the news"),
    ("Please text my friend that I'm on my way.", "send messages"),
    ("Buy two tickets for the concert tonight.", "buy tickets"),
    ("Open the garage door.", "control devices"),
    ("Show me my calendar for next week.", "read your calendar"),
]
_DECLINE_ANSWERS = [
    "Sorry, I can't {action}. I only have a calculator and a knowledge-base search.",
    "I'm sorry, but I can't {action}: my only tools are a calculator and a knowledge-base search.",
    "Sorry, I can't {action}, but I can do arithmetic or look things up in the knowledge base.",
]
_CALC_QUESTIONS = ["What is {p}?", "Compute {p}.", "How much is {p}?",
                   "Could you work out {p} for me?", "Calculate {p}.", "What's {p}?",
                   "Please tell me {p}.", "I need to know {p}.", "What do you get for {p}?",
                   "Quick question: what is {p}?", "Find {p}.", "What does {p} come to?",
                   "Work out {p}.", "Can you calculate {p}?", "Tell me {p}.",
                   "What is the value of {p}?", "Evaluate {p}.", "Help me with {p}.",
                   "Give me {p}.", "What's the result of {p}?"]
_CALC_ANSWERS = ["{expr} = {r}.", "The answer is {r}.", "{expr} is {r}.", "That comes to {r}.",
                 "The result is {r}."]
_FACT_QUESTIONS = {
    "population": ["What is the population of {name}?", "How many people live in {name}?",
                   "How many inhabitants does {name} have?", "What is {name}'s population?",
                   "Tell me the population of {name}."],
    "founded": ["When was {name} founded?", "In what year was {name} founded?",
                "What year was {name} established?", "What is the founding year of {name}?",
                "Tell me when {name} was founded."],
    "region": ["Which region is {name} in?", "In what region is {name} located?",
               "What region does {name} belong to?", "Which region contains {name}?"],
    "river": ["Which river runs through {name}?", "What river is {name} on?",
              "Name the river that flows through {name}.", "Which river does {name} lie on?"],
    "born": ["When was {name} born?", "In what year was {name} born?",
             "What year was {name} born in?", "What is the birth year of {name}?"],
    "profession": ["What does {name} do for a living?", "What is {name}'s job?",
                   "What does {name} work as?", "What is the profession of {name}?"],
    "hometown": ["Where was {name} born?", "Which city is {name} from?",
                 "Where does {name} come from?", "What is {name}'s hometown?"],
    "employees": ["How many employees does {name} have?", "How many people work at {name}?",
                  "How big is the staff of {name}?", "What is the headcount of {name}?"],
    "headquarters": ["Where is {name} headquartered?", "In which city is {name} based?",
                     "Where are the headquarters of {name}?", "What city is {name} based in?"],
}
# Fact questions are also built from a frame and a noun phrase for the fact ("Tell me the
# {np} of {name}." with "number of inhabitants"): every noun phrase is used in training, and
# whole frames (index 3, 7, ...) are held out, so an evaluation question is a sentence shape
# the model never saw, made of words it did.
_FACT_NOUNS = {
    "population": ["population", "number of inhabitants", "number of residents",
                   "resident count"],
    "founded": ["founding year", "year of founding", "founding date"],
    "region": ["region", "home region"],
    "river": ["river", "local river"],
    "born": ["birth year", "year of birth"],
    "profession": ["profession", "trade", "occupation", "line of work"],
    "hometown": ["hometown", "birthplace", "city of birth", "home city"],
    "employees": ["number of employees", "headcount", "staff size", "workforce"],
    "headquarters": ["headquarters", "headquarters city", "base"],
}
_FACT_FRAMES = ["Tell me {name}'s {np}.", "Tell me the {np} of {name}.",
                "Do you know the {np} of {name}?", "What's the {np} of {name}?",
                "Can you look up the {np} of {name}?", "I'd like to know the {np} of {name}.",
                "Find the {np} of {name}.", "{name}: what is its {np}?",
                "Look up {name} and give me its {np}.", "Please find the {np} of {name}.",
                "I want the {np} of {name}.", "What is {name}'s {np}?",
                "Give me the {np} of {name}, please.", "Search for the {np} of {name}.",
                "Could you tell me the {np} of {name}?", "What would the {np} of {name} be?"]
# Optional words around a training question (never around an evaluation one).
_PREFIXES = ["Hi! ", "Hey, ", "Hello. ", "Quick question: ", "Question: ", "Please help. ",
             "I wonder: ", "OK. "]
_SUFFIXES = [" Thanks!", " Thank you.", " Please.", " Thanks in advance."]
_DECORATE_RATE = 0.3
_NOT_FOUND_ANSWERS = ["I couldn't find {name} in the knowledge base.",
                      "The knowledge base has no entry for {name}.",
                      "I found nothing about {name} in the knowledge base."]


@functools.cache
def fact_question_templates(fact: str, split: str) -> tuple[str, ...]:
    """Every question template about `fact` in `split`: the fact's own questions and the
    frames with each of its noun phrases ("{name}" left to fill). Built once per pair."""
    framed = [frame.replace("{np}", noun) for frame in _split(_FACT_FRAMES, split)
              for noun in _FACT_NOUNS[fact]]
    return tuple(_split(_FACT_QUESTIONS[fact], split) + framed)


def _decorate(rng: random.Random, question: str, split: str) -> str:
    """A training question, sometimes with a greeting before it or thanks after it."""
    if split == "eval" or rng.random() >= _DECORATE_RATE:
        return question
    if rng.random() < 0.5:
        return rng.choice(_PREFIXES) + question
    return question + rng.choice(_SUFFIXES)


_FACT_ANSWERS = {
    "population": ["{name} has a population of {value}.", "The population of {name} is {value}."],
    "founded": ["{name} was founded in {value}.", "It was founded in {value}."],
    "region": ["{name} is in the {value} region.", "It lies in the {value} region."],
    "river": ["{name} lies on the river {value}.", "The river {value} runs through {name}."],
    "born": ["{name} was born in {value}.", "{name} was born in the year {value}."],
    "profession": ["{name} works as {a_value}.", "{name} is {a_value}."],
    "hometown": ["{name} was born in {value}.", "{name} comes from {value}."],
    "employees": ["{name} has {value} employees.", "{value} people work at {name}."],
    "headquarters": ["{name} is headquartered in {value}.", "{name} is based in {value}."],
}
# operation: (fact, questions, expression, answers); {v} is the fact, {k} a random amount.
_TWO_STEP = {
    "double": ("population", [
        "What is twice the population of {name}?",
        "What would the population of {name} be if it doubled?",
        "If {name} doubled in size, how many people would live there?",
        "Double the population of {name}: what number is that?",
        "What is the population of {name} times two?", "Take the population of {name} and "
        "double it.", "Multiply the population of {name} by 2.",
        "What is two times the number of people in {name}?"],
        "{v} * 2", ["Twice the population of {name} is {r}.", "It would be {r}."]),
    "since_founded": ("founded", [
        "How many years ago was {name} founded, counting from 2026?",
        "How old is {name} in 2026?",
        "How many years have passed since {name} was founded, as of 2026?",
        "In 2026, how many years will it be since {name} was founded?",
        "How many years has {name} existed as of 2026?",
        "Count the years from the founding of {name} to 2026.",
        "How long ago, from 2026, was {name} founded?",
        "What is 2026 minus the founding year of {name}?"],
        "2026 - {v}", ["{name} was founded {r} years before 2026.", "That is {r} years."]),
    "age": ("born", [
        "How old will {name} be in 2026?", "What age does {name} reach in 2026?",
        "In 2026, how old will {name} be?", "How many years old is {name} in 2026?",
        "What is {name}'s age in 2026?", "How old is {name} as of 2026?",
        "Work out how old {name} is in 2026.", "In 2026, what is the age of {name}?"],
        "2026 - {v}", ["{name} will be {r} years old in 2026.", "{name} turns {r} in 2026."]),
    "grow": ("population", [
        "If the population of {name} grew by {k}, what would it be?",
        "{name} gains {k} residents. What is its new population?",
        "What would the population of {name} be with {k} more people?",
        "Suppose {k} people move to {name}. How many people live there then?",
        "Add {k} to the population of {name}. What do you get?",
        "What is the population of {name} plus {k}?",
        "If {k} more people lived in {name}, what would its population be?",
        "{k} newcomers arrive in {name}. What is the population now?"],
        "{v} + {k}", ["The population of {name} would be {r}.", "It would be {r}."]),
    "hire": ("employees", [
        "If {name} hired {k} more people, how many employees would it have?",
        "{name} adds {k} employees. How many does it have now?",
        "How many employees would {name} have after hiring {k} more?",
        "Suppose {name} takes on {k} new staff. What is its headcount then?",
        "Add {k} to the number of employees of {name}.",
        "Take the headcount of {name} and add {k}.",
        "If {name} grew by {k} employees, what would its staff size be?",
        "{name} hires {k} people. What is its workforce then?"],
        "{v} + {k}", ["{name} would have {r} employees.", "That makes {r} employees."]),
}
# More training-only two-step questions, composed from a reference to the fact ({f}: "the
# staff size of {name}", "{name}'s workforce", ... over every noun phrase of the fact) and an
# operation frame, so the model meets many sentence shapes instead of eight fixed ones.
_TWO_STEP_FRAMES = {
    "double": ["Compute twice {f}.", "What is {f} multiplied by 2?", "Find {f} and double it.",
               "Look up {f}, then multiply it by two.", "How much is {f} times two?",
               "If {f} doubled, what would it be?", "Give me double {f}."],
    "since_founded": ["How many years are there from {f} to 2026?", "Subtract {f} from 2026.",
                      "Look up {f} and subtract it from 2026.",
                      "How long has {name} existed by 2026?",
                      "Counting to 2026, how many years have passed since {f}?"],
    "age": ["How many years are there from {f} to 2026?", "Subtract {f} from 2026.",
            "Look up {f} and subtract it from 2026.", "What age will {name} turn in 2026?",
            "How old does {name} get in 2026?", "Given {f}, how old is {name} in 2026?"],
    "grow": ["What is {f} plus {k}?", "Add {k} to {f}.", "Look up {f} and add {k}.",
             "If {name} had {k} more residents, what would {f} be?",
             "{name} grows by {k} people. What is its population then?",
             "How many people would live in {name} if {k} more moved there?",
             "Increase {f} by {k}."],
    "hire": ["What is {f} plus {k}?", "Add {k} to {f}.", "Look up {f} and add {k}.",
             "{name} takes on {k} more workers. What is {f} now?",
             "How many people would work at {name} after {k} new hires?",
             "If {name} employed {k} more people, what would {f} be?", "Increase {f} by {k}."],
}
_FACT_REFERENCES = ["the {np} of {name}", "{name}'s {np}"]
_APART_QUESTIONS = ["How many years apart were {a} and {b} founded?",
                    "How many years separate the founding of {a} and {b}?",
                    "What is the gap in years between the founding of {a} and {b}?",
                    "By how many years do the founding dates of {a} and {b} differ?",
                    "What is the difference between the founding years of {a} and {b}?",
                    "How far apart in time were {a} and {b} founded?",
                    "How many years lie between the founding of {a} and {b}?",
                    "Compare the founding years of {a} and {b}: how many years apart are they?"]
_APART_ANSWERS = ["{a} and {b} were founded {r} years apart.", "They were founded {r} years apart."]
_TWO_STEP_WEIGHTS = {"double": 0.17, "since_founded": 0.2, "age": 0.16, "grow": 0.16,
                     "hire": 0.16, "apart": 0.15}


def _all_template_text() -> str:
    parts = [SYSTEM_PROMPT, NO_RESULTS, json.dumps(TOOLS), *PROFESSIONS, *_REGION_SUFFIXES,
             *_DECLINE_ANSWERS, *_CALC_QUESTIONS, *_CALC_ANSWERS, *_APART_QUESTIONS,
             *_APART_ANSWERS, *_FACT_FRAMES, *_PREFIXES, *_SUFFIXES, *_NOT_FOUND_ANSWERS,
             *_FACT_REFERENCES, *(t for ts in _TWO_STEP_FRAMES.values() for t in ts),
             *(noun for nouns in _FACT_NOUNS.values() for noun in nouns),
             "is a city in the region on the river It was founded in and has a "
             "population of who was born in is a company headquartered in employees"]
    for questions, answers in _GREETINGS.values():
        parts += questions + answers
    parts += [text for pair in _DECLINES for text in pair]
    for table in (_FACT_QUESTIONS, _FACT_ANSWERS):
        parts += [t for templates in table.values() for t in templates]
    for _, questions, expression, answers in _TWO_STEP.values():
        parts += [*questions, expression, *answers]
    return " ".join(parts)


_TEMPLATE_WORDS = frozenset(re.findall(r"[a-z]+", _all_template_text().lower()))


def _split(templates: Sequence, split: str) -> list:
    """The training (index % 4 != 3) or evaluation (index % 4 == 3) part of a template list."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return [t for i, t in enumerate(templates) if (i % 4 == 3) == (split == "eval")]


def _pick(rng: random.Random, templates: Sequence, split: str):
    return rng.choice(_split(templates, split))


# ---------------------------------------------------------------------------------- turns

@dataclass
class _Turn:
    """One user question, the tool calls that answer it and the final answer."""

    question: str
    calls: list[tuple[str, dict]]
    answer: str
    expected: str | None


def is_eval_operands(operands: Sequence[int]) -> bool:
    """Whether a calculator problem with these operands belongs to the evaluation split."""
    return zlib.crc32(",".join(str(n) for n in operands).encode()) % 4 == 0


def _number(rng: random.Random) -> int:
    return rng.randint(2, rng.choice((20, 100, 1000, 10_000)))


def _calculator_problem(rng: random.Random) -> tuple[list[int], str, list[str]]:
    """Operands, the expression for the tool and the ways a user may write it."""
    op = rng.choice(("add", "sub", "mul", "div", "sum3", "paren"))
    if op == "add":
        a, b = _number(rng), _number(rng)
        return [a, b], f"{a} + {b}", [f"{a} + {b}", f"{a} plus {b}", f"the sum of {a} and {b}"]
    if op == "sub":
        b, a = sorted(rng.sample(range(2, rng.choice((100, 1000, 10_000))), 2))
        return [a, b], f"{a} - {b}", [f"{a} - {b}", f"{a} minus {b}",
                                      f"the difference between {a} and {b}"]
    if op == "mul":
        a, b = rng.randint(2, rng.choice((20, 100, 1000))), rng.randint(2, 99)
        return [a, b], f"{a} * {b}", [f"{a} * {b}", f"{a} times {b}", f"{a} multiplied by {b}",
                                      f"the product of {a} and {b}"]
    if op == "div":
        b = rng.randint(2, 25)
        a = b * rng.randint(2, 400) if rng.random() < 0.8 else rng.randint(10, 2000)
        return [a, b], f"{a} / {b}", [f"{a} / {b}", f"{a} divided by {b}"]
    if op == "sum3":
        a, b, c = (rng.randint(2, rng.choice((100, 1000))) for _ in range(3))
        return [a, b, c], f"{a} + {b} + {c}", [f"{a} + {b} + {c}", f"{a} plus {b} plus {c}",
                                               f"the sum of {a}, {b} and {c}"]
    a, b, c = rng.randint(2, 100), rng.randint(2, 100), rng.randint(2, 20)
    return [a, b, c], f"({a} + {b}) * {c}", [f"({a} + {b}) * {c}",
                                             f"the sum of {a} and {b}, times {c}"]


def _calculator_turn(rng: random.Random, split: str, entities: list[Entity]) -> _Turn:
    while True:
        operands, expression, surfaces = _calculator_problem(rng)
        if is_eval_operands(operands) == (split == "eval"):
            break
    result = calculator(expression)
    question = _decorate(rng, _pick(rng, _CALC_QUESTIONS, split).format(
        p=rng.choice(surfaces)), split)
    answer = rng.choice(_CALC_ANSWERS).format(expr=expression, r=result)
    return _Turn(question, [("calculator", {"expression": expression})], answer, result)


def _search_turn(rng: random.Random, split: str, entities: list[Entity]) -> _Turn:
    entity = rng.choice(entities)
    fact = rng.choice(list(entity.facts))
    value = str(entity.facts[fact])
    templates = (_split(_FACT_QUESTIONS[fact], split) if rng.random() < 0.5
                 else fact_question_templates(fact, split))
    question = _decorate(rng, rng.choice(templates).format(name=entity.name), split)
    answer = rng.choice(_FACT_ANSWERS[fact]).format(name=entity.name, value=value,
                                                    a_value=_article(value))
    return _Turn(question, [("search", {"query": entity.name})], answer, value)


def _apart_turn(rng: random.Random, split: str, entities: list[Entity]) -> _Turn:
    a, b = rng.sample([e for e in entities if "founded" in e.facts], 2)
    years = sorted((int(a.facts["founded"]), int(b.facts["founded"])), reverse=True)
    expression = f"{years[0]} - {years[1]}"
    result = calculator(expression)
    return _Turn(_decorate(rng, _pick(rng, _APART_QUESTIONS, split).format(a=a.name, b=b.name),
                           split),
                 [("search", {"query": a.name}), ("search", {"query": b.name}),
                  ("calculator", {"expression": expression})],
                 rng.choice(_APART_ANSWERS).format(a=a.name, b=b.name, r=result), result)


def _two_step_turn(rng: random.Random, split: str, entities: list[Entity]) -> _Turn:
    operation = rng.choices(list(_TWO_STEP_WEIGHTS), weights=list(_TWO_STEP_WEIGHTS.values()))[0]
    if operation == "apart":
        return _apart_turn(rng, split, entities)
    fact, questions, expression_template, answers = _TWO_STEP[operation]
    entity = rng.choice([e for e in entities if fact in e.facts])
    k = rng.randint(1, 99) * rng.choice((10, 100))
    expression = expression_template.format(v=entity.facts[fact], k=k)
    result = calculator(expression)
    template = _pick(rng, questions, split)
    if split == "train" and rng.random() < 0.5:
        reference = rng.choice(_FACT_REFERENCES).replace("{np}", rng.choice(_FACT_NOUNS[fact]))
        template = rng.choice(_TWO_STEP_FRAMES[operation]).replace("{f}", reference)
    return _Turn(_decorate(rng, template.format(name=entity.name, k=k), split),
                 [("search", {"query": entity.name}), ("calculator", {"expression": expression})],
                 rng.choice(answers).format(name=entity.name, r=result), result)


def _greeting_turn(rng: random.Random, split: str, entities: list[Entity]) -> _Turn:
    questions, answers = _GREETINGS[rng.choice(list(_GREETINGS))]
    return _Turn(_pick(rng, questions, split), [], rng.choice(answers), None)


def _closing_turn(rng: random.Random, split: str, entities: list[Entity]) -> _Turn:
    """Thanks or goodbye, after a question was answered."""
    questions, answers = _GREETINGS[rng.choice(("thanks", "goodbye"))]
    return _Turn(_pick(rng, questions, split), [], rng.choice(answers), None)


def _decline_turn(rng: random.Random, split: str, entities: list[Entity]) -> _Turn:
    request, action = _pick(rng, _DECLINES, split)
    return _Turn(request, [], rng.choice(_DECLINE_ANSWERS).format(action=action), None)


def _not_found_turn(rng: random.Random, kb: KnowledgeBase, entities: list[Entity],
                    taken_words: frozenset[str]) -> _Turn:
    """A question about a name that is in no knowledge base: the search finds nothing and the
    answer says so (instead of inventing a value)."""
    like = rng.choice(entities)
    while True:
        words = ["".join(rng.choices(_SYLLABLES, k=rng.choice((2, 3)))).capitalize()
                 for _ in range(2 if like.kind == "person" else 1)]
        name = " ".join(words)
        if (not any(w.lower() in taken_words or w.lower() in _TEMPLATE_WORDS for w in words)
                and kb.search(name) == NO_RESULTS):
            break
    fact = rng.choice(list(like.facts))
    question = _decorate(rng, rng.choice(fact_question_templates(fact, "train")).format(
        name=name), "train")
    return _Turn(question, [("search", {"query": name})],
                 rng.choice(_NOT_FOUND_ANSWERS).format(name=name), None)


_TURN_MAKERS = {"greeting": _greeting_turn, "calculator": _calculator_turn,
                "search": _search_turn, "two_step": _two_step_turn, "decline": _decline_turn,
                "closing": _closing_turn}


# -------------------------------------------------------------------------- copy drills

_DRILLS = ("Copy: {s}\nCopied: {s}", "Repeat after me: {s}. {s}.", "{s} | {s}",
           "Say {s} twice: {s}, {s}.", "Write down {s}.\nWritten: {s}")


def copy_drills(kb: KnowledgeBase, n: int, seed: int = 3) -> list[str]:
    """`n` short texts that repeat numbers and invented words ("Copy: 4821 Tarvel 93\nCopied:
    4821 Tarvel 93"). Mixed into pretraining, they teach a small model to copy (attend to an
    earlier occurrence and continue it) early on; every tool call needs that skill, as names
    and numbers go from the question into the call and from the result into the answer.
    The words never equal a word of a knowledge-base name, so no entity leaks."""
    rng = random.Random(seed)
    taken = {w for e in kb.entities for w in _tokens(e.name)}

    def item() -> str:
        if rng.random() < 0.6:
            return str(rng.randint(0, 10 ** rng.randint(1, 6)))
        while True:
            word = "".join(rng.choices(_SYLLABLES, k=rng.choice((2, 3))))
            if word not in taken:
                return word.capitalize() if rng.random() < 0.7 else word

    texts = []
    for _ in range(n):
        lines = []
        for _ in range(rng.randint(3, 6)):
            s = " ".join(item() for _ in range(rng.randint(1, 4)))
            lines.append(rng.choice(_DRILLS).format(s=s))
        texts.append("\n".join(lines))
    return texts


# -------------------------------------------------------------------------- conversations

def run_tool(kb: KnowledgeBase, name: str, arguments: dict) -> str:
    """What the tool `name` returns for `arguments` (as the model would see it)."""
    if name == "calculator":
        return calculator(arguments["expression"])
    if name == "search":
        return kb.search(arguments["query"])
    raise ValueError(f"unknown tool {name!r}; expected calculator or search")


def _append_turn(messages: list[dict], turn: _Turn, kb: KnowledgeBase) -> None:
    messages.append({"role": "user", "content": turn.question})
    for name, arguments in turn.calls:
        call_id = f"call_{sum(1 for m in messages if m['role'] == 'tool') + 1}"
        messages.append({"role": "assistant", "content": None, "tool_calls": [{
            "id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}]})
        messages.append({"role": "tool", "tool_call_id": call_id,
                         "content": run_tool(kb, name, arguments)})
    messages.append({"role": "assistant", "content": turn.answer})


def _kind_schedule(n: int, rng: random.Random) -> list[str]:
    """`n` kinds in the proportions of KIND_MIX (remainders to the largest shares), shuffled."""
    counts = {kind: int(n * share) for kind, share in KIND_MIX.items()}
    by_remainder = sorted(KIND_MIX, key=lambda k: n * KIND_MIX[k] - counts[k], reverse=True)
    for kind in by_remainder[: n - sum(counts.values())]:
        counts[kind] += 1
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    rng.shuffle(kinds)
    return kinds


def training_conversations(kb: KnowledgeBase, n: int, seed: int = 1,
                           taken_words: Sequence[str] = ()) -> list[dict]:
    """`n` conversations `{"kind", "tools", "messages"}` in the OpenAI chat format, about
    entities that are not held out, phrased with the training templates only. The names
    asked about in `not_found` chats are in no knowledge base: not in `kb`, and sharing no
    word with `taken_words` (another knowledge base's `invented_words`)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    entities = [e for e in kb.entities if not e.held_out]
    taken = frozenset(w.lower() for w in [*taken_words, *invented_words(kb)])
    conversations = []
    for kind in _kind_schedule(n, rng):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.8 else []
        if kind == "not_found":
            turn = _not_found_turn(rng, kb, entities, taken)
        else:
            turn = _TURN_MAKERS[kind](rng, "train", entities)
        _append_turn(messages, turn, kb)
        if 0 < len(turn.calls) <= 2 and rng.random() < MULTI_TURN_RATE:  # keep it short
            follow_up = _TURN_MAKERS[rng.choice(FOLLOW_UPS)]
            _append_turn(messages, follow_up(rng, "train", entities), kb)
        conversations.append({"kind": kind, "tools": TOOLS, "messages": messages})
    return conversations


# ------------------------------------------------------------------------------ evaluation

@dataclass
class EvalTask:
    """A held-out question, the answer a correct reply must contain and the expected tools."""

    kind: str
    messages: list[dict]
    expected: str | None
    expected_tools: list[str]

    def __post_init__(self) -> None:
        if self.kind not in EVAL_KINDS:
            raise ValueError(f"unknown eval kind {self.kind!r}; expected one of {EVAL_KINDS}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EvalTask:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def eval_tasks(kb: KnowledgeBase, n_per_kind: int, seed: int = 2) -> list[EvalTask]:
    """`n_per_kind` tasks of each kind in EVAL_KINDS, with the evaluation phrasings, held-out
    entities and evaluation calculator operands."""
    if n_per_kind < 0:
        raise ValueError(f"n_per_kind must be >= 0, got {n_per_kind}")
    rng = random.Random(seed)
    held_out = [e for e in kb.entities if e.held_out]
    tasks = []
    for kind in EVAL_KINDS:
        for _ in range(n_per_kind):
            turn = _TURN_MAKERS[kind](rng, "eval", held_out)
            messages = [{"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": turn.question}]
            tasks.append(EvalTask(kind, messages, turn.expected, [c[0] for c in turn.calls]))
    return tasks


_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_REFUSAL = re.compile(r"\b(sorry|can't|can’t|cannot|can not|unable)\b", re.IGNORECASE)


def is_decline(text: str) -> bool:
    """Whether `text` reads as a refusal ("sorry", "can't", "cannot", "unable")."""
    return _REFUSAL.search(text) is not None


def contains_answer(text: str, expected: str) -> bool:
    """Whether `expected` occurs in `text` as a whole number ("444" not in "4445"; "48,200"
    counts as "48200") or, for words, as whole words in any case."""
    text, expected = _THOUSANDS_COMMA.sub("", text), _THOUSANDS_COMMA.sub("", expected.strip())
    if _NUMBER.fullmatch(expected):
        pattern = rf"(?<![\d.\-]){re.escape(expected)}(?!\d|\.\d)"
        return re.search(pattern, text) is not None
    return re.search(rf"(?<!\w){re.escape(expected)}(?!\w)", text, re.IGNORECASE) is not None


def answer_is_correct(task: EvalTask, final_text: str) -> bool:
    """Decline: a refusal. Greeting: any non-refusing reply. Others: contains `expected`."""
    if task.kind == "decline":
        return is_decline(final_text)
    if task.expected is None:
        return bool(final_text.strip()) and not is_decline(final_text)
    return contains_answer(final_text, task.expected)


def write_dataset(out_dir: str | Path, *, seed: int = 0, num_train: int,
                  num_eval_per_kind: int) -> dict:
    """Write knowledge.jsonl, train.jsonl and eval.jsonl under `out_dir`; return the counts."""
    kb = make_knowledge_base(seed)
    files = {"knowledge": kb.documents(),
             "train": training_conversations(kb, num_train, seed=seed + 1),
             "eval": [t.to_dict() for t in eval_tasks(kb, num_eval_per_kind, seed=seed + 2)]}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return {name: len(rows) for name, rows in files.items()}
