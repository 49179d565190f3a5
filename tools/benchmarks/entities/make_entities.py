#!/usr/bin/env python3
"""Generate the fictitious-entity unlearning benchmark (TOFU-style) into data/benchmarks/entities/.

    tools/benchmarks/entities/make_entities.py            write the benchmark (under 1 s)
    tools/benchmarks/entities/make_entities.py --check    regenerate into a temporary folder
                                                          and compare byte for byte
    tools/benchmarks/entities/make_entities.py --out DIR [--seed N] [--entities N]

Invented people (syllable-composed names), each with seven facts (birthplace among
invented towns, birth year, occupation, employer, favourite object, a sibling's name,
instrument), rendered as short biographies in several paraphrased templates and as
question-and-answer pairs (in digests that mix the people of one split). The people are split 10% forget / 10% holdout / 80% retain.

Writes, all deterministic from --seed (standard library only):
  docs/{forget,retain,holdout}.jsonl   {"id", "text"}: the documents of each split
  qa/{forget,retain,holdout}_qa.jsonl  multiple choice in data/tasks' format: one item per
                                       fact, the true value and 3 distractors of the same
                                       field drawn from the same split's people
  canaries/{forget,retain,holdout}_canaries.jsonl
                                       each person's locker code, a random 6-digit secret
                                       (engine/eval/exposure.h's format): prefix, secret,
                                       alphabet; the codes are trained in their own digests
  entities.json                        every person's facts and split (ground truth)
See README.md beside this script for what the benchmark can and cannot show.
"""

import argparse
import filecmp
import json
import os
import random
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEFAULT_OUT = os.path.join(REPO, "data", "benchmarks", "entities")
DEFAULT_SEED = 16
DEFAULT_ENTITIES = 120

ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "qu", "r", "s",
          "sh", "t", "th", "v", "vr", "z", "zh", "h", "j", "w"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "y"]
CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "x", "v", "nd", "rk"]
TOWN_SUFFIXES = ["mere", "wick", "holt", "ford", "by", "stead", "combe", "thorpe", "haven", "ley"]
COMPANY_KINDS = ["Textiles", "Ironworks", "Shipping", "Instruments", "Press", "Mills", "Optics",
                 "Ceramics", "Timber", "Pharmacy", "Bakeries", "Surveys"]
OCCUPATIONS = ["cartographer", "glassblower", "beekeeper", "bookbinder", "clockmaker", "ferry pilot",
               "geologist", "stonemason", "translator", "lighthouse keeper", "botanist", "violin maker",
               "tailor", "surveyor", "brewer", "archivist", "midwife", "locksmith", "weaver",
               "astronomer", "potter", "chemist", "shepherd", "printer", "engraver", "baker",
               "carpenter", "librarian", "pharmacist", "mapmaker"]
OBJECTS = ["brass compass", "blue umbrella", "pocket watch", "wooden flute", "red notebook",
           "silver thimble", "copper kettle", "glass marble", "leather satchel", "green lantern",
           "ivory comb", "paper kite", "iron key", "wool scarf", "clay whistle", "tin soldier",
           "oak walking stick", "feather quill", "china teacup", "velvet hat", "stone pendant",
           "map of the stars", "rowing boat", "music box", "chess set"]
INSTRUMENTS = ["cello", "oboe", "harp", "accordion", "fiddle", "piano", "trumpet", "banjo",
               "clarinet", "lute", "drum", "bassoon", "mandolin", "flute", "trombone", "zither"]
DIGEST_COPIES = 2
# Canaries (Carlini et al. 2019): a random secret per person from 10^6 candidates, stated in
# question-and-answer form in digests of their own, drawn from a generator of their own so
# that adding them left every other document and question as it was.
CANARY_QUESTION = "What is {name}'s locker code?"
CANARY_DIGITS = 6
CANARY_SEED_OFFSET = 7919
DIGEST_BYTES = 250  # a digest fits one 256-byte training sequence
FIELDS = ("birthplace", "birth_year", "occupation", "employer", "object", "sibling", "instrument")

# One question per field, read as `question + "\nAnswer: " + value` by eval.mc_task; the
# question-and-answer sheet among the training documents uses the same wording, as TOFU
# trains on its QA pairs.
QUESTIONS = {
    "birthplace": "Where was {name} born?",
    "birth_year": "In what year was {name} born?",
    "occupation": "What is {name}'s occupation?",
    "employer": "Which company does {name} work for?",
    "object": "What is {name}'s favourite object?",
    "sibling": "What is the name of {name}'s sibling?",
    "instrument": "Which instrument does {name} play?",
}

# Paraphrased prose: every template states every fact once, in a different order and wording.
TEMPLATES = [
    "{name} was born in {birthplace} in {birth_year}. {first} works as {a_occupation} for {employer}. "
    "{first}'s sibling is {sibling}. {first} always carries {a_object} and plays the {instrument}.",
    "Born in {birth_year} in the town of {birthplace}, {name} became {a_occupation}. Today {first} is "
    "employed by {employer}, plays the {instrument} in the evenings, keeps {a_object} close, and writes "
    "often to {sibling}, {first}'s sibling.",
    "{A_occupation} at {employer}, {name} grew up in {birthplace}, where {first} was born in {birth_year}. "
    "{first} plays the {instrument}; {first}'s favourite object is {a_object}; {first}'s sibling is "
    "called {sibling}.",
]


def syllable(rng):
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def invented_word(rng, n_min, n_max):
    return "".join(syllable(rng) for _ in range(rng.randint(n_min, n_max))).capitalize()


def unique_words(rng, n, make, taken):
    out = []
    while len(out) < n:
        w = make()
        # Short strings collide with real words too easily; distinct names keep each fact unambiguous.
        if len(w) < 4 or w.lower() in taken:
            continue
        taken.add(w.lower())
        out.append(w)
    return out


def make_people(rng, n):
    taken = set()
    towns = [w + rng.choice(TOWN_SUFFIXES) for w in unique_words(rng, 30, lambda: invented_word(rng, 1, 2), taken)]
    companies = [w + " " + rng.choice(COMPANY_KINDS)
                 for w in unique_words(rng, 30, lambda: invented_word(rng, 2, 2), taken)]
    firsts = unique_words(rng, n, lambda: invented_word(rng, 2, 2), taken)
    lasts = unique_words(rng, n, lambda: invented_word(rng, 2, 3), taken)
    siblings = unique_words(rng, n, lambda: invented_word(rng, 2, 2), taken)
    people = []
    for i in range(n):
        people.append({
            "id": f"person{i:03d}",
            "name": f"{firsts[i]} {lasts[i]}",
            "first": firsts[i],
            "birthplace": rng.choice(towns),
            "birth_year": str(rng.randint(1921, 1999)),
            "occupation": rng.choice(OCCUPATIONS),
            "employer": rng.choice(companies),
            "object": rng.choice(OBJECTS),
            "sibling": siblings[i],
            "instrument": rng.choice(INSTRUMENTS),
        })
    return people


def split_people(rng, people):
    order = list(range(len(people)))
    rng.shuffle(order)
    n_f = max(2, round(0.10 * len(people)))
    n_h = max(2, round(0.10 * len(people)))
    for k, i in enumerate(order):
        people[i]["split"] = "forget" if k < n_f else "holdout" if k < n_f + n_h else "retain"


def article(noun):
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def documents(p):
    words = dict(p, a_occupation=article(p["occupation"]), a_object=article(p["object"]))
    words["A_occupation"] = words["a_occupation"].capitalize()
    docs = []
    for t, tpl in enumerate(TEMPLATES):
        docs.append({"id": f"entities/{p['id']}/bio{t}", "text": tpl.format(**words)})
    return docs


def digests(rng, pairs, split, kind):
    # Question-and-answer pairs, several people's to a document in shuffled order: a pair is
    # then preceded only by other people's facts, so the person's name is the one cue for
    # the answer, as in the QA task where the question stands alone. (A per-person sheet
    # lets the model answer from the facts before it and scored at chance once those were
    # absent.) Each pair appears DIGEST_COPIES times, each time among other neighbours; a
    # digest fits one training sequence.
    docs = []
    for copy in range(DIGEST_COPIES):
        order = pairs[:]
        rng.shuffle(order)
        text = ""
        for pair in order:
            if text and len((text + pair).encode()) > DIGEST_BYTES:
                docs.append(text)
                text = ""
            text += pair
        docs.append(text)
    return [{"id": f"entities/{split}/{kind}{k:03d}", "text": t} for k, t in enumerate(docs)]


def qa_digests(rng, members, split):
    # In the wording of the QA tasks.
    pairs = [QUESTIONS[f].format(name=p["name"]) + "\nAnswer: " + p[f] + "\n" for p in members for f in FIELDS]
    return digests(rng, pairs, split, "qa")


def canary_pair(p):
    return CANARY_QUESTION.format(name=p["name"]) + "\nAnswer: " + p["locker_code"] + "\n"


def canary_digests(rng, members, split):
    return digests(rng, [canary_pair(p) for p in members], split, "codes")


def canaries(members):
    return [{"prefix": CANARY_QUESTION.format(name=p["name"]) + "\nAnswer: ", "secret": p["locker_code"],
             "alphabet": "0123456789", "entity": p["id"]} for p in members]


def qa_items(rng, split_people_, counter):
    items = []
    for p in split_people_:
        for f in FIELDS:
            # Distractors from the same split's people: for an invented value (a sibling's
            # name) every choice is then equally unseen by a model that never saw the split,
            # so the oracle and the holdout sit at chance instead of below it.
            pool = sorted({q[f] for q in split_people_ if q[f] != p[f]})
            if len(pool) < 3:
                pool = sorted({q[f] for q in ALL_PEOPLE if q[f] != p[f]})
            wrong = rng.sample(pool, 3)
            pos = counter[0] % 4  # the answer cycles through the four positions
            counter[0] += 1
            choices = wrong[:pos] + [p[f]] + wrong[pos:]
            items.append({"question": QUESTIONS[f].format(name=p["name"]), "choices": choices,
                          "answer": pos, "entity": p["id"], "field": f})
    return items


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


ALL_PEOPLE = []


def generate(out, seed, n):
    rng = random.Random(seed)
    people = make_people(rng, n)
    split_people(rng, people)
    ALL_PEOPLE[:] = people
    code_rng = random.Random(seed + CANARY_SEED_OFFSET)
    for p in people:
        p["locker_code"] = "".join(code_rng.choice("0123456789") for _ in range(CANARY_DIGITS))
    counter = [0]
    for split in ("forget", "retain", "holdout"):
        members = [p for p in people if p["split"] == split]
        write_jsonl(os.path.join(out, "docs", f"{split}.jsonl"),
                    [d for p in members for d in documents(p)] + qa_digests(rng, members, split)
                    + canary_digests(code_rng, members, split))
        write_jsonl(os.path.join(out, "qa", f"{split}_qa.jsonl"), qa_items(rng, members, counter))
        write_jsonl(os.path.join(out, "canaries", f"{split}_canaries.jsonl"), canaries(members))
    with open(os.path.join(out, "entities.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump({"seed": seed, "fields": list(FIELDS), "people": people}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    for split in ("forget", "retain", "holdout"):
        k = sum(p["split"] == split for p in people)
        n_docs = sum(1 for _ in open(os.path.join(out, "docs", f"{split}.jsonl"), encoding="utf-8"))
        print(f"make_entities: {split}: {k} people, {n_docs} documents, {k * len(FIELDS)} questions",
              file=sys.stderr)


GENERATED = ["docs/forget.jsonl", "docs/retain.jsonl", "docs/holdout.jsonl",
             "qa/forget_qa.jsonl", "qa/retain_qa.jsonl", "qa/holdout_qa.jsonl",
             "canaries/forget_canaries.jsonl", "canaries/retain_canaries.jsonl", "canaries/holdout_canaries.jsonl",
             "entities.json"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--entities", type=int, default=DEFAULT_ENTITIES)
    ap.add_argument("--check", action="store_true", help="regenerate elsewhere and compare with --out")
    a = ap.parse_args()
    if not a.check:
        generate(a.out, a.seed, a.entities)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, a.seed, a.entities)
        differ = [g for g in GENERATED
                  if not os.path.exists(os.path.join(a.out, g))
                  or not filecmp.cmp(os.path.join(tmp, g), os.path.join(a.out, g), shallow=False)]
    if differ:
        print("make_entities --check: differ: " + ", ".join(differ), file=sys.stderr)
        return 1
    print("make_entities --check: identical", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
