"""Compose the shipped profile bank from hand-written component lists.

    python plugins/turnloom-usp/scripts/generate_bank.py        # rewrites data/profiles.json

Deterministic (fixed seed): running it again gives the same file. Scenes are drawn
with uneven weights on purpose, so the bank has common and rare kinds of users,
which is what the density sampler is for.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from turnloom_usp.profile import parse_profile, require_complete, to_dict

SEED = 20250226
COUNT = 320
OUT = Path(__file__).resolve().parents[1] / "src" / "turnloom_usp" / "data" / "profiles.json"

# scene -> (weight, [(goal, [task details])])
SCENES: dict[str, tuple[int, list[tuple[str, list[str]]]]] = {
    "cooking": (5, [
        ("plan a week of cheap, healthy dinners", [
            "budget of about 40 a week for two people; one of them does not eat pork",
            "only a small stove and one pot; wants leftovers for lunch"]),
        ("bake bread at home for the first time", [
            "has flour, yeast and an old oven that runs hot",
            "tried once and the loaf came out dense; wants to know why"]),
        ("cook a dinner party menu for six guests", [
            "one guest is vegan and one is allergic to nuts; party is on Saturday",
            "wants dishes that can be made ahead in the morning"]),
    ]),
    "travel": (5, [
        ("plan a ten-day trip on a tight budget", [
            "travelling in spring with a partner; prefers trains to planes",
            "first trip abroad; worried about money and language"]),
        ("organise a weekend city break", [
            "arriving Friday evening, leaving Sunday night; likes museums and street food",
            "travelling with a toddler; needs places with lifts and short walks"]),
        ("sort out a cancelled flight", [
            "flight was cancelled the day before; booked through an online agency",
            "needs to reach a wedding on time and has a non-refundable hotel"]),
    ]),
    "programming": (5, [
        ("fix a bug in a small Python script", [
            "the script reads a CSV file and crashes on empty lines",
            "a loop over a dictionary raises an error about its size changing"]),
        ("learn how to build a first website", [
            "knows a little HTML; wants a page for a small bakery",
            "wants to publish a portfolio for free"]),
        ("speed up a slow database query", [
            "the query joins three tables and takes twelve seconds",
            "the app slowed down after the table grew past a million rows"]),
    ]),
    "fitness": (5, [
        ("start running without getting injured", [
            "has not exercised in years; knees hurt on stairs",
            "wants to run a 5 km race in three months"]),
        ("build a home workout routine", [
            "has a pair of dumbbells and twenty minutes a day",
            "works long shifts and can only train at odd hours"]),
    ]),
    "finance": (3, [
        ("make a monthly budget and start saving", [
            "income varies month to month; has a credit card balance",
            "wants to save for a deposit on a flat within three years"]),
        ("understand how a pension or retirement account works", [
            "just got a first job with an employer pension scheme",
            "ten years from retirement and unsure whether savings are enough"]),
    ]),
    "career": (3, [
        ("prepare for a job interview", [
            "interview is next Tuesday for a team lead role",
            "career changer; worried about gaps in the CV"]),
        ("write a cover letter", [
            "applying to a charity; has volunteering experience but little paid work",
            "applying for a junior analyst position"]),
    ]),
    "writing": (3, [
        ("improve a short story", [
            "the story is 3,000 words; friends say the ending feels rushed",
            "writing in a second language and unsure about tenses"]),
        ("write a speech for a family event", [
            "best-man speech; must be under five minutes and not embarrassing",
            "speech for a parent's seventieth birthday"]),
    ]),
    "home": (3, [
        ("fix a leaking tap", [
            "the kitchen tap drips even when closed tight; has basic tools",
            "renting; not sure whether to call the landlord"]),
        ("paint a small room", [
            "walls have old wallpaper; wants a light, warm colour",
            "has never painted before and has one weekend"]),
    ]),
    "parenting": (3, [
        ("help a child with bedtime trouble", [
            "four-year-old wakes up several times a night",
            "teenager stays up late on the phone"]),
        ("find screen-time rules that work", [
            "two children aged 8 and 11 argue over the tablet",
            "wants rules the whole family can keep"]),
    ]),
    "legal": (1, [
        ("understand a rental contract before signing", [
            "the contract has a clause about repairs and a large deposit",
            "moving in next month; landlord wants a signature by Friday"]),
    ]),
    "pets": (1, [
        ("care for a newly adopted older dog", [
            "the dog is nine years old, anxious, and does not eat much",
            "has a cat at home already"]),
    ]),
    "gardening": (1, [
        ("grow vegetables on a balcony", [
            "north-facing balcony, about four square metres",
            "tomatoes last year got a white powder on the leaves"]),
    ]),
    "astronomy": (1, [
        ("choose a first telescope", [
            "lives in a city with light pollution; budget around 300",
            "wants to show a child the moon and Saturn"]),
    ]),
    "music": (1, [
        ("learn to play the guitar as an adult", [
            "has a second-hand acoustic guitar; fingers hurt after ten minutes",
            "wants to play songs at a friend's wedding in six months"]),
    ]),
    "beekeeping": (1, [
        ("set up a first beehive", [
            "has a large garden; neighbours are nervous about stings",
            "wants to know what to do in the first winter"]),
    ]),
}

# occupation -> (educations, min age, max age)
OCCUPATIONS: dict[str, tuple[list[str], int, int]] = {
    "nurse": (["nursing diploma", "bachelor's degree in nursing"], 23, 62),
    "secondary school teacher": (["bachelor's degree in education", "master's degree in history"], 25, 64),
    "software developer": (["bachelor's degree in computer science", "self-taught, coding bootcamp"], 21, 58),
    "electrician": (["vocational apprenticeship"], 19, 63),
    "university student": (["currently studying biology", "currently studying economics",
                            "currently studying literature"], 18, 26),
    "high school student": (["secondary school, final year"], 15, 18),
    "retired postal worker": (["secondary school"], 62, 85),
    "retired engineer": (["master's degree in mechanical engineering"], 63, 84),
    "shop assistant": (["secondary school"], 17, 55),
    "accountant": (["bachelor's degree in accounting", "professional accounting qualification"], 24, 64),
    "farmer": (["secondary school", "agricultural college"], 22, 75),
    "chef": (["culinary school", "learned on the job"], 20, 60),
    "graphic designer": (["bachelor's degree in design"], 22, 55),
    "bus driver": (["secondary school"], 25, 64),
    "doctor": (["medical degree"], 27, 66),
    "lawyer": (["law degree"], 26, 67),
    "stay-at-home parent": (["bachelor's degree in psychology", "secondary school"], 24, 50),
    "warehouse worker": (["secondary school"], 18, 60),
    "marketing manager": (["bachelor's degree in business"], 27, 58),
    "research scientist": (["PhD in chemistry", "PhD in physics"], 27, 65),
    "hairdresser": (["vocational training in hairdressing"], 18, 60),
    "police officer": (["police academy"], 22, 58),
    "freelance translator": (["master's degree in translation"], 24, 66),
    "small business owner": (["secondary school", "bachelor's degree in business"], 25, 70),
    "unemployed, looking for work": (["secondary school", "bachelor's degree in sociology"], 19, 60),
}

NAMES = {
    "female": ["Maya", "Ines", "Aiko", "Fatima", "Olga", "Grace", "Lucia", "Priya", "Chloe",
               "Amara", "Sofia", "Hannah", "Mei", "Zanele", "Elif", "Rosa", "Ingrid", "Nadia"],
    "male": ["Tom", "Kwame", "Luis", "Hiroshi", "Omar", "Pavel", "Daniel", "Arjun", "Mateo",
             "Jonas", "Kofi", "Liam", "Yusuf", "Chen", "Diego", "Anders", "Rafael", "Tariq"],
    "non-binary": ["Alex", "Sam", "Robin", "Kai", "Noor", "Jules"],
}
GENDER_WEIGHTS = {"female": 10, "male": 10, "non-binary": 1}

LOCATIONS = ["Leeds, UK", "Lagos, Nigeria", "Osaka, Japan", "Toronto, Canada", "Lyon, France",
             "Austin, USA", "Pune, India", "Krakow, Poland", "Melbourne, Australia",
             "Nairobi, Kenya", "Valencia, Spain", "Sao Paulo, Brazil", "Hamburg, Germany",
             "a village in rural Ireland", "Izmir, Turkey", "Manila, Philippines",
             "Gothenburg, Sweden", "Mexico City, Mexico", "a small town in Ohio, USA",
             "Cape Town, South Africa", "Seoul, South Korea", "Auckland, New Zealand"]

FAMILIES = ["single, lives alone", "married with two young children", "lives with a partner",
            "divorced, shares custody of a teenager", "lives with elderly parents",
            "single parent of a six-year-old", "married, children have left home",
            "shares a flat with two friends", "widowed, has grandchildren nearby",
            "engaged, planning a wedding"]

HOBBIES = ["hiking", "chess", "knitting", "football", "video games", "birdwatching",
           "photography", "reading crime novels", "cycling", "baking", "choir singing",
           "fishing", "board games", "yoga", "woodworking", "podcasts about history",
           "gardening", "swimming", "drawing comics", "salsa dancing", "running", "sudoku"]

STYLES = ["writes short, plain sentences", "very polite, thanks often",
          "casual, uses lowercase and abbreviations", "formal and precise",
          "rambles and adds side stories", "direct, gets to the point",
          "asks many follow-up questions", "a bit impatient", "warm and chatty",
          "anxious, asks for reassurance", "dry sense of humour", "uses emojis now and then",
          "careful, double-checks every step", "sceptical, wants sources",
          "enthusiastic, uses exclamation marks", "terse, one line at a time"]


def compose(rng: random.Random, index: int) -> dict:
    scene = rng.choices(list(SCENES), weights=[w for w, _ in SCENES.values()])[0]
    goal, details = rng.choice(SCENES[scene][1])
    occupation = rng.choice(list(OCCUPATIONS))
    educations, lo, hi = OCCUPATIONS[occupation]
    gender = rng.choices(list(GENDER_WEIGHTS), weights=list(GENDER_WEIGHTS.values()))[0]
    age = rng.randint(lo, hi)
    profile = {
        "id": f"usp-{index:04d}",
        "facts": {
            "name": rng.choice(NAMES[gender]),
            "age": age,
            "gender": gender,
            "occupation": occupation,
            "education": rng.choice(educations),
            "location": rng.choice(LOCATIONS),
            "family": rng.choice(FAMILIES) if age >= 20 else "lives with parents",
            "hobbies": " and ".join(rng.sample(HOBBIES, 2)),
            "goal": goal,
            "task_details": rng.choice(details),
        },
        "traits": {
            "big_five": {t: round(rng.random(), 2) for t in
                         ("openness", "conscientiousness", "extraversion", "agreeableness",
                          "neuroticism")},
            "speaking_style": "; ".join(rng.sample(STYLES, 2)),
        },
    }
    where = f"generated profile {index}"
    return to_dict(require_complete(parse_profile(profile, where=where), where=where))


def main() -> None:
    rng = random.Random(SEED)
    bank = [compose(rng, i) for i in range(COUNT)]
    OUT.write_text(json.dumps(bank, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(bank)} profiles to {OUT}")


if __name__ == "__main__":
    main()
