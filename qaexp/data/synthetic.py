"""Deterministic synthetic reading-comprehension data in the Hugging Face ``squad`` schema.

Each paragraph states facts about two or three entities of the same type (people, companies or
cities), so every question has same-type distractors in its context; attribute values are drawn
at random per paragraph, so a question alone never predicts its answer. Questions paraphrase the
stating sentence with their own templates and word order. A share of paragraphs is padded with
further facts and neutral filler to 450-700 words, past one 384-token window, so that the
sliding-window code paths get exercised. Standard library only, and seeded with
``random.Random`` from a string, so the output never depends on the Python hash seed.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache, cached_property

# ----------------------------------------------------------------------------------------------
# Word lists. Pools are disjoint (no first name is a city, no surname is an organisation stem),
# so an answer string never turns up inside an entity of another kind.
# ----------------------------------------------------------------------------------------------

_FIRST_NAMES = (
    "Anna",
    "Omar",
    "Lena",
    "Tomas",
    "Priya",
    "Kenji",
    "Sofia",
    "Mateo",
    "Amara",
    "Lukas",
    "Nadia",
    "Ravi",
    "Elena",
    "Samuel",
    "Ingrid",
    "Kwame",
    "Mei",
    "Daniel",
    "Fatima",
    "Jonas",
    "Clara",
    "Hugo",
    "Aisha",
    "Viktor",
    "Maya",
    "Felix",
    "Leila",
    "Oscar",
    "Yuki",
    "Pablo",
    "Noor",
    "Emil",
    "Rosa",
    "Tariq",
    "Helena",
    "Marco",
    "Zara",
    "Anders",
    "Lucia",
    "Jamal",
    "Irene",
    "Stefan",
    "Chiara",
    "Malik",
    "Greta",
    "Arjun",
    "Olga",
    "Henrik",
    "Nina",
    "Diego",
    "Sana",
    "Pieter",
    "Ines",
    "Kofi",
    "Julia",
    "Rafael",
    "Esther",
    "Mikhail",
    "Lina",
    "Theo",
)
_MIDDLE_NAMES = (
    "Lee",
    "Morgan",
    "Ray",
    "Quinn",
    "Robin",
    "Sam",
    "Kai",
    "Noel",
    "Dana",
    "Jean",
    "Rene",
    "Alex",
    "Ali",
    "Sasha",
    "Jules",
    "Remy",
)
_SURNAMES = (
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Kowalski",
    "Haddad",
    "Fernandes",
    "Novak",
    "Brennan",
    "Castillo",
    "Iyer",
    "Mwangi",
    "Petrov",
    "Schneider",
    "Yilmaz",
    "Sato",
    "Larsen",
    "Duarte",
    "Nakamura",
    "Abernathy",
    "Vasquez",
    "Holm",
    "Achebe",
    "Kaur",
    "Whitfield",
    "Romano",
    "Eriksen",
    "Mensah",
    "Dubois",
    "Kramer",
    "Osei",
    "Varga",
    "Bianchi",
    "Quinlan",
    "Ferreira",
    "Horvat",
    "Jansen",
    "Kimura",
    "Lorenz",
    "Marsh",
    "Nieminen",
    "Ortega",
    "Pereira",
    "Rasmussen",
    "Sorensen",
    "Takahashi",
    "Underwood",
    "Volkov",
    "Wojcik",
    "Zhang",
    "Adeyemi",
    "Bergstrom",
    "Chandra",
    "Delgado",
    "Engel",
    "Fischer",
    "Gallagher",
    "Hoffmann",
    "Ivanova",
    "Jovanovic",
    "Keller",
    "Lambert",
    "Mendoza",
    "Nilsson",
    "Oyelaran",
    "Park",
    "Reyes",
    "Salazar",
    "Thorne",
    "Ueda",
    "Vidal",
    "Weber",
    "Xu",
    "Yamamoto",
    "Zielinski",
    "Acosta",
    "Baptiste",
    "Conti",
    "Drummond",
    "Esposito",
    "Falk",
    "Grunewald",
    "Hartmann",
    "Ibarra",
    "Juarez",
    "Kovacs",
    "Lindgren",
    "Moretti",
)
_CITIES = (
    ("Lyon", "France"),
    ("Porto", "Portugal"),
    ("Krakow", "Poland"),
    ("Osaka", "Japan"),
    ("Leipzig", "Germany"),
    ("Bergen", "Norway"),
    ("Valencia", "Spain"),
    ("Turin", "Italy"),
    ("Ghent", "Belgium"),
    ("Utrecht", "the Netherlands"),
    ("Gothenburg", "Sweden"),
    ("Tampere", "Finland"),
    ("Aarhus", "Denmark"),
    ("Brno", "the Czech Republic"),
    ("Graz", "Austria"),
    ("Basel", "Switzerland"),
    ("Cork", "Ireland"),
    ("Edinburgh", "Scotland"),
    ("Montreal", "Canada"),
    ("Vancouver", "Canada"),
    ("Denver", "the United States"),
    ("Curitiba", "Brazil"),
    ("Rosario", "Argentina"),
    ("Medellin", "Colombia"),
    ("Valparaiso", "Chile"),
    ("Arequipa", "Peru"),
    ("Guadalajara", "Mexico"),
    ("Busan", "South Korea"),
    ("Kaohsiung", "Taiwan"),
    ("Pune", "India"),
    ("Mysore", "India"),
    ("Chiang Mai", "Thailand"),
    ("Cebu", "the Philippines"),
    ("Surabaya", "Indonesia"),
    ("Da Nang", "Vietnam"),
    ("Izmir", "Turkey"),
    ("Tabriz", "Iran"),
    ("Marrakesh", "Morocco"),
    ("Kumasi", "Ghana"),
    ("Mombasa", "Kenya"),
    ("Arusha", "Tanzania"),
    ("Durban", "South Africa"),
    ("Hobart", "Australia"),
    ("Dunedin", "New Zealand"),
    ("Tartu", "Estonia"),
    ("Kaunas", "Lithuania"),
    ("Cluj", "Romania"),
    ("Plovdiv", "Bulgaria"),
    ("Thessaloniki", "Greece"),
    ("Ljubljana", "Slovenia"),
    ("Lviv", "Ukraine"),
    ("Almaty", "Kazakhstan"),
    ("Sapporo", "Japan"),
    ("Lille", "France"),
    ("Seville", "Spain"),
    ("Bologna", "Italy"),
    ("Rotterdam", "the Netherlands"),
    ("Malmo", "Sweden"),
    ("Trondheim", "Norway"),
    ("Salzburg", "Austria"),
    ("Galway", "Ireland"),
    ("Halifax", "Canada"),
    ("Recife", "Brazil"),
    ("Cordoba", "Argentina"),
)
_COUNTRY_OF_CITY = dict(_CITIES)
_ORG_STEMS = (
    "Northwind",
    "Bluefin",
    "Kestrel",
    "Ironbark",
    "Silverline",
    "Redwood",
    "Brightwater",
    "Harborview",
    "Stonebridge",
    "Clearpath",
    "Evergreen",
    "Lumen",
    "Meridian",
    "Copperleaf",
    "Halcyon",
    "Quillon",
    "Tidewater",
    "Granite",
    "Skylark",
    "Foxglove",
    "Amberly",
    "Cobalt",
    "Driftwood",
    "Emberly",
    "Fairhaven",
    "Goldcrest",
    "Highmoor",
    "Juniper",
    "Larkspur",
    "Mosaic",
    "Nimbus",
    "Oakridge",
    "Pinecrest",
    "Riverstone",
    "Sablewood",
    "Thistle",
    "Verity",
    "Willowmere",
    "Zephyr",
    "Bramblecot",
)
_ORG_SUFFIXES = (
    "Systems",
    "Labs",
    "Dynamics",
    "Analytics",
    "Industries",
    "Robotics",
    "Energy",
    "Biotech",
    "Software",
    "Foods",
    "Logistics",
    "Instruments",
    "Materials",
    "Health",
)
_UNIVERSITY_STEMS = (
    "Aldermoor",
    "Ashcombe",
    "Brackley",
    "Carrow",
    "Danford",
    "Easterly",
    "Fenwick",
    "Glenmore",
    "Hartwell",
    "Kingsbury",
    "Langdale",
    "Marlow",
    "Northgate",
    "Penrose",
    "Ravensworth",
    "Selwick",
    "Thornbury",
    "Westbrook",
    "Whitcombe",
    "Yarrow",
    "Elmhurst",
    "Hollins",
    "Ormsby",
    "Colbridge",
)
_UNIVERSITY_FORMS = ("{} University", "{} College", "{} Institute of Technology", "{} Polytechnic")
_FIELDS = (
    "marine biology",
    "computational linguistics",
    "structural engineering",
    "organic chemistry",
    "medieval history",
    "applied mathematics",
    "soil science",
    "urban planning",
    "quantum physics",
    "developmental psychology",
    "materials science",
    "comparative literature",
    "agricultural economics",
    "plant genetics",
    "climate science",
    "industrial design",
    "public health",
    "astrophysics",
    "political philosophy",
    "music theory",
    "veterinary medicine",
    "mechanical engineering",
    "molecular biology",
    "economic history",
    "cognitive science",
    "environmental law",
    "architectural history",
    "nuclear engineering",
    "behavioural economics",
    "social anthropology",
    "ancient languages",
    "biomedical engineering",
    "theoretical computer science",
    "forest ecology",
    "labour economics",
    "geology",
    "oceanography",
    "art history",
    "statistics",
    "neuroscience",
)
# Professions all start with a consonant sound, so the templates can say "a {profession}".
_PROFESSIONS = (
    "marine biologist",
    "civil engineer",
    "jazz pianist",
    "software developer",
    "landscape painter",
    "novelist",
    "documentary filmmaker",
    "structural engineer",
    "pastry chef",
    "sports journalist",
    "furniture maker",
    "theatre director",
    "botanist",
    "geologist",
    "data scientist",
    "photographer",
    "ceramic artist",
    "violinist",
    "physician",
    "pharmacist",
    "translator",
    "historian",
    "mathematician",
    "chemist",
    "tax lawyer",
    "schoolteacher",
    "glassblower",
    "cartographer",
    "poet",
    "sculptor",
    "nurse",
    "radio presenter",
    "composer",
    "fashion designer",
    "wine maker",
    "stonemason",
    "pilot",
    "surgeon",
    "veterinarian",
    "museum curator",
)
_PRODUCT_MODIFIERS = (
    "portable",
    "solar-powered",
    "low-cost",
    "folding",
    "wireless",
    "handheld",
    "lightweight",
    "waterproof",
    "electric",
    "compact",
    "modular",
    "rechargeable",
    "automatic",
    "digital",
    "hand-cranked",
)
_PRODUCT_NOUNS = (
    "water filter",
    "heart monitor",
    "radio",
    "bicycle",
    "sewing machine",
    "weather station",
    "microscope",
    "camera",
    "wheelchair",
    "pressure cooker",
    "hearing aid",
    "insulin pump",
    "seed drill",
    "typewriter",
    "telescope",
    "tractor",
    "loudspeaker",
    "incubator",
    "reading lamp",
    "wind turbine",
)
_AWARD_STEMS = (
    "Halvorsen",
    "Castellan",
    "Ardent",
    "Bellweather",
    "Corvin",
    "Dunmore",
    "Everett",
    "Galloway",
    "Hollis",
    "Marchetti",
    "Norcross",
    "Penhaligon",
    "Ravelston",
    "Stanmore",
    "Tremaine",
    "Vance",
    "Ashgrove",
    "Wexley",
)
_AWARD_FORMS = ("{} Medal", "{} Prize", "{} Award", "{} Fellowship")
_RIVER_STEMS = (
    "Ardle",
    "Brennet",
    "Dorran",
    "Elsby",
    "Fennick",
    "Garrow",
    "Hesk",
    "Isley",
    "Jarrow",
    "Kell",
    "Lathe",
    "Morrow",
    "Nevin",
    "Orme",
    "Pell",
    "Quenby",
    "Rusk",
    "Sallow",
    "Tamsin",
    "Ulla",
    "Varne",
    "Wend",
    "Yare",
    "Cotter",
)
_LANDMARK_ADJECTIVES = (
    "Old",
    "Grand",
    "North",
    "Crescent",
    "Silver",
    "Copper",
    "Lantern",
    "Harbour",
    "Royal",
    "Blue",
    "Iron",
    "Victory",
)
_LANDMARK_NOUNS = (
    "Tower",
    "Bridge",
    "Library",
    "Concert Hall",
    "Opera House",
    "Market Hall",
    "Museum",
    "Lighthouse",
    "Cathedral",
    "Railway Station",
    "Stadium",
    "Gate",
)
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_FILLER_OPENERS = (
    "At the time,",
    "According to local records,",
    "In the years that followed,",
    "As several historians have noted,",
    "For a long period,",
    "By most accounts,",
    "In the wider region,",
    "Even so,",
    "During the same decade,",
    "Outside the centre,",
    "Looking back,",
    "Meanwhile,",
    "Over the following years,",
    "In contrast,",
)
_FILLER_CLAUSES = (
    "newspapers paid little attention to these events",
    "the surrounding district changed a great deal",
    "several archives kept letters and photographs from the period",
    "public debate focused mainly on transport and housing",
    "many small workshops opened and closed within a few years",
    "the local council met only a handful of times each year",
    "travel between the larger towns remained slow and expensive",
    "visitors often remarked on the quiet streets and the long winters",
    "most families depended on farming, fishing or small trade",
    "the school system was reorganised more than once",
    "new roads slowly replaced the older tracks across the hills",
    "prices for timber and grain rose and fell with the seasons",
    "few of the early buildings have survived in their original form",
    "the work attracted students and apprentices from neighbouring areas",
    "critics and supporters argued about the project for many months",
    "the accounts written by different witnesses do not always agree",
    "a growing number of people took an interest in science and engineering",
    "the regional economy went through several difficult periods",
    "trade fairs and public lectures became popular with ordinary residents",
    "much of the correspondence from those years was later lost in a fire",
    "local craftsmen sold most of their goods at the weekly market",
    "the harbour and the markets were busy for most of the year",
    "heavy rain flooded the lower streets on several occasions",
    "a small museum later collected documents about this era",
    "the population grew steadily as new families arrived",
    "the first public library in the area was still under discussion",
    "the railway reached the valley only after long delays",
    "several families left the area in search of better work",
    "students often travelled abroad to complete their training",
    "the local press reported on the work with growing interest",
    "few people expected the changes that came later",
    "the winters were long and the summers short and dry",
)

# Year ranges keep a person's timeline plausible: born before any event of their adult life.
_EVENT_YEARS = (1970, 2022)
_YEARS_OF_FACT = {"born": (1925, 1965), "city_founded": (1100, 1890)}
# Difficulty knobs. A small encoder (MiniLM-L6) fine-tuned for ~200 steps must still reach
# F1 >= 80, so later mentions mostly repeat the full name and most paragraphs have 2 subjects.
_SUBJECT_COUNTS = (2, 2, 2, 3)  # subjects per paragraph, drawn uniformly from this tuple
_SURNAME_ONLY_SHARE = 0.25  # share of repeat mentions of a person that use the surname alone
_FILLER_SHARE = 0.35  # share of lengthening steps that add a filler sentence, not facts
_MAX_DRAWS = 40  # attempts to find an unused value before a fact is dropped
_SHORT_WORDS = (60, 115)  # target range for short contexts
_LONG_WORDS = (460, 680)  # target range for long contexts; one more sentence may overshoot
_LATE_ANSWER_WORD = 320  # an answer past this word sits beyond the first 384-token window
_WORD = re.compile(r"\S+")
_QUANTITY_KINDS = ("employees", "population", "elevation", "weight", "revenue")
# Years and people fill a slot of most facts; asking them less often balances the answer kinds.
_ASK_WEIGHT = {"year": 0.5, "person": 0.6}
_THE_KINDS = ("product", "landmark", "river", "award")  # stated as "the {slot}"


# ----------------------------------------------------------------------------------------------
# Fact types: how a fact is stated, and how each of its slots is asked about.
# A slot's name is the kind of entity that fills it.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FactType:
    """A relation: sentence templates that state it and question templates per answer slot."""

    name: str
    statements: tuple[str, ...]
    questions: dict[str, tuple[str, ...]]

    @cached_property
    def slots(self) -> tuple[str, ...]:
        """Slot names in the order they appear in the first statement template."""
        return tuple(name for _, name in _parse(self.statements[0]) if name is not None)


_FACT_TYPES = {
    fact.name: fact
    for fact in (
        _FactType(
            "profession",
            (
                "{person} is a {profession} known for careful and patient work.",
                "{person} worked for many years as a {profession}.",
                "By training, {person} is a {profession}.",
                "Colleagues describe {person} as a gifted {profession}.",
            ),
            {
                "profession": (
                    "What is {person}'s profession?",
                    "What does {person} do for a living?",
                    "What kind of work does {person} do?",
                    "What is the occupation of {person}?",
                ),
                "person": ("Which person works as a {profession}?", "Who is a {profession}?"),
            },
        ),
        _FactType(
            "born",
            (
                "{person} was born in {city} in {year}.",
                "Born in {year} in {city}, {person} grew up in a large family.",
                "In {year}, {person} was born in the city of {city}.",
                "{person} came into the world in {city} in {year}.",
            ),
            {
                "city": (
                    "Where was {person} born?",
                    "In which city was {person} born?",
                    "What is the birthplace of {person}?",
                    "{person} was born in what city?",
                ),
                "year": (
                    "When was {person} born?",
                    "In what year was {person} born?",
                    "What is the birth year of {person}?",
                    "{person} was born in which year?",
                ),
                "person": ("Who was born in {city}?", "Which person was born in {city} in {year}?"),
            },
        ),
        _FactType(
            "studied",
            (
                "{person} studied {field} at {university}.",
                "At {university}, {person} earned a degree in {field}.",
                "{person} completed a degree in {field} at {university}.",
            ),
            {
                "field": (
                    "What did {person} study?",
                    "What subject did {person} earn a degree in?",
                    "In which discipline did {person} graduate?",
                    "What field did {person} study at university?",
                ),
                "university": (
                    "Where did {person} study {field}?",
                    "Which university did {person} attend?",
                    "At which institution did {person} earn a degree?",
                ),
                "person": (
                    "Who studied {field} at {university}?",
                    "Who earned a degree in {field}?",
                ),
            },
        ),
        _FactType(
            "founded",
            (
                "{person} founded {org} in {year}.",
                "In {year}, {person} established {org}.",
                "{org} was founded by {person} in {year}.",
                "{org} was started in {year} by {person}.",
            ),
            {
                "org": (
                    "Which company did {person} found?",
                    "What organisation was established by {person}?",
                    "What is the name of the company that {person} started?",
                ),
                "year": (
                    "When was {org} founded?",
                    "In what year did {person} establish {org}?",
                    "What year was {org} started?",
                ),
                "person": (
                    "Who founded {org}?",
                    "Who started {org}?",
                    "Which person established {org}?",
                ),
            },
        ),
        _FactType(
            "designed",
            (
                "{person} designed the {product}, a device weighing only {weight}.",
                "The {product}, which weighs {weight}, was designed by {person}.",
                "Among other projects, {person} developed the {product}, weighing about {weight}.",
            ),
            {
                "product": (
                    "What did {person} design?",
                    "Which device is {person} credited with?",
                    "What product did {person} develop?",
                ),
                "person": (
                    "Who designed the {product}?",
                    "The {product} was developed by whom?",
                    "Who is the designer of the {product}?",
                ),
                "weight": (
                    "How much does the {product} weigh?",
                    "What is the weight of the {product}?",
                    "How heavy is the device that {person} designed?",
                ),
            },
        ),
        _FactType(
            "award",
            (
                "On {date}, {person} received the {award}.",
                "{person} was awarded the {award} on {date}.",
                "The {award} went to {person} on {date}.",
            ),
            {
                "award": (
                    "Which prize did {person} receive?",
                    "What award was given to {person}?",
                    "What honour did {person} win?",
                ),
                "date": (
                    "When did {person} receive the {award}?",
                    "On what date was {person} given the {award}?",
                    "What was the date on which {person} won the {award}?",
                ),
                "person": (
                    "Who received the {award}?",
                    "Who won the {award}?",
                    "To whom was the {award} given?",
                ),
            },
        ),
        _FactType(
            "moved",
            (
                "In {year}, {person} moved to {city}.",
                "{person} relocated to {city} in {year}.",
                "{person} settled in {city} in {year} and lived there for a decade.",
            ),
            {
                "city": (
                    "To which city did {person} move?",
                    "Where did {person} relocate to?",
                    "In which city did {person} settle?",
                ),
                "year": (
                    "When did {person} move to {city}?",
                    "In what year did {person} relocate to {city}?",
                    "What year did {person} settle in {city}?",
                ),
                "person": ("Who moved to {city} in {year}?", "Who settled in {city}?"),
            },
        ),
        _FactType(
            "ceo",
            (
                "{person} has served as chief executive of {org} since {year}.",
                "Since {year}, {org} has been led by {person}.",
                "{person} became the head of {org} in {year}.",
            ),
            {
                "person": (
                    "Who leads {org}?",
                    "Who is the chief executive of {org}?",
                    "Who has run {org} since {year}?",
                ),
                "year": (
                    "Since when has {person} led {org}?",
                    "In what year did {person} take charge of {org}?",
                ),
                "org": (
                    "Which company does {person} lead?",
                    "What organisation is headed by {person}?",
                ),
            },
        ),
        _FactType(
            "mayor",
            (
                "{person} was elected mayor of {city} in {year}.",
                "In {year}, {person} became mayor of {city}.",
                "{city} elected {person} as its mayor in {year}.",
            ),
            {
                "person": (
                    "Who became mayor of {city} in {year}?",
                    "Who was elected mayor of {city}?",
                ),
                "year": (
                    "When did {person} become mayor of {city}?",
                    "In what year was {person} elected mayor?",
                ),
                "city": (
                    "Of which city did {person} become mayor?",
                    "Where was {person} elected mayor?",
                ),
            },
        ),
        _FactType(
            "hq",
            (
                "{org} is headquartered in {city}, {country}.",
                "The headquarters of {org} are in {city}, {country}.",
                "{org} has its main offices in {city}, {country}.",
            ),
            {
                "city": (
                    "Where is {org} headquartered?",
                    "In which city are the headquarters of {org}?",
                    "Which city is home to the main offices of {org}?",
                ),
                "country": (
                    "In which country is {org} based?",
                    "What country is {org} headquartered in?",
                ),
                "org": (
                    "Which company is headquartered in {city}?",
                    "What organisation has its main offices in {city}?",
                ),
            },
        ),
        _FactType(
            "employees",
            (
                "{org} employs {employees}.",
                "About {employees} work for {org}.",
                "With {employees} on its payroll, {org} is a large employer in the region.",
            ),
            {
                "employees": (
                    "How many people work for {org}?",
                    "How many employees does {org} have?",
                    "What is the size of the workforce at {org}?",
                ),
            },
        ),
        _FactType(
            "launched",
            (
                "{org} launched the {product} in {year}.",
                "In {year}, {org} released the {product}.",
                "The {product} was introduced by {org} in {year}.",
            ),
            {
                "product": (
                    "What product did {org} launch in {year}?",
                    "Which product was released by {org}?",
                ),
                "year": (
                    "When did {org} launch the {product}?",
                    "In what year was the {product} released?",
                ),
                "org": ("Which company released the {product}?", "Who launched the {product}?"),
            },
        ),
        _FactType(
            "revenue",
            (
                "In {year}, {org} reported revenue of {revenue}.",
                "{org} earned {revenue} in {year}.",
                "Revenue at {org} reached {revenue} in {year}.",
            ),
            {
                "revenue": (
                    "How much revenue did {org} report?",
                    "How much did {org} earn in {year}?",
                    "What was the revenue of {org} in {year}?",
                ),
                "year": ("In which year did {org} earn {revenue}?",),
            },
        ),
        _FactType(
            "population",
            (
                "{city} is home to about {population}.",
                "About {population} live in {city}.",
                "The population of {city} is roughly {population}.",
            ),
            {
                "population": (
                    "How many people live in {city}?",
                    "What is the population of {city}?",
                    "Roughly how many residents does {city} have?",
                ),
            },
        ),
        _FactType(
            "city_founded",
            (
                "{city} was founded in {year} as a small river port.",
                "The first settlement at {city} dates from {year}.",
                "Records show that {city} was established in {year}.",
            ),
            {
                "year": (
                    "When was {city} founded?",
                    "In what year was {city} established?",
                    "What year does the first settlement at {city} date from?",
                ),
                "city": ("Which city was founded in {year}?",),
            },
        ),
        _FactType(
            "river",
            (
                "{city} lies on the {river}.",
                "The {river} flows through the centre of {city}.",
                "{city} grew up along the banks of the {river}.",
            ),
            {
                "river": (
                    "Which river flows through {city}?",
                    "On what river does {city} lie?",
                    "What river runs through {city}?",
                ),
                "city": ("Which city lies on the {river}?",),
            },
        ),
        _FactType(
            "elevation",
            (
                "{city} sits at an altitude of {elevation} above sea level.",
                "At {elevation} above sea level, {city} has cool summers.",
                "The centre of {city} lies {elevation} above sea level.",
            ),
            {
                "elevation": (
                    "How high above sea level is {city}?",
                    "At what altitude does {city} lie?",
                    "What is the elevation of {city}?",
                ),
            },
        ),
        _FactType(
            "landmark",
            (
                "The {landmark} in {city} was designed by {person} and completed in {year}.",
                "{person} designed the {landmark}, which opened in {city} in {year}.",
                "Completed in {year}, the {landmark} in {city} is the work of {person}.",
            ),
            {
                "landmark": (
                    "What did {person} design in {city}?",
                    "Which building in {city} did {person} design?",
                ),
                "person": (
                    "Who designed the {landmark}?",
                    "Who was the architect of the {landmark}?",
                ),
                "year": (
                    "When was the {landmark} completed?",
                    "In what year did the {landmark} open?",
                ),
                "city": ("Where is the {landmark}?", "In which city is the {landmark} located?"),
            },
        ),
    )
}

# Each domain: the kind of entity a paragraph is about, and the facts such an entity can have.
_DOMAINS = {
    "person": (
        "profession",
        "born",
        "studied",
        "founded",
        "designed",
        "award",
        "moved",
        "ceo",
        "mayor",
    ),
    "org": ("hq", "founded", "employees", "launched", "revenue", "ceo"),
    "city": ("population", "city_founded", "river", "elevation", "landmark", "mayor"),
}
_DOMAIN_NAMES = tuple(_DOMAINS)


@cache
def _parse(template: str) -> tuple[tuple[str, str | None], ...]:
    """Split a template into (literal text, slot name or None) pairs."""
    return tuple((literal, name) for literal, name, _, _ in string.Formatter().parse(template))


# ----------------------------------------------------------------------------------------------
# Entity values
# ----------------------------------------------------------------------------------------------


def _draw_person(rng: random.Random) -> tuple[str, set[str]]:
    first, surname = rng.choice(_FIRST_NAMES), rng.choice(_SURNAMES)
    keys = {f"first:{first}", f"surname:{surname}"}
    if rng.random() < 0.3:
        middle = rng.choice(_MIDDLE_NAMES)
        return f"{first} {middle} {surname}", keys
    return f"{first} {surname}", keys


def _draw_year(rng: random.Random, years: tuple[int, int]) -> tuple[str, set[str]]:
    year = str(rng.randint(*years))
    return year, {f"year:{year}"}


def _draw_date(rng: random.Random, years: tuple[int, int]) -> tuple[str, set[str]]:
    year, keys = _draw_year(rng, years)
    day, month = rng.randint(1, 28), rng.choice(_MONTHS)
    text = f"{day} {month} {year}" if rng.random() < 0.6 else f"{month} {day}, {year}"
    return text, keys


def _draw_from(pool: tuple[str, ...], kind: str):
    """Drawer for a plain word list, unique per paragraph."""

    def draw(rng: random.Random) -> tuple[str, set[str]]:
        value = rng.choice(pool)
        return value, {f"{kind}:{value}"}

    return draw


def _draw_stemmed(stems: tuple[str, ...], forms: tuple[str, ...], kind: str):
    """Drawer for names built as a stem plus a form; the stem is unique per paragraph."""

    def draw(rng: random.Random) -> tuple[str, set[str]]:
        stem = rng.choice(stems)
        return rng.choice(forms).format(stem), {f"{kind}:{stem}"}

    return draw


def _draw_quantity(low: int, high: int, step: int, unit: str):
    """Drawer for a comma-grouped number with a unit; the number is unique per paragraph."""

    def draw(rng: random.Random) -> tuple[str, set[str]]:
        number = rng.randint(low // step, high // step) * step
        return f"{number:,} {unit}", {f"number:{number}"}

    return draw


def _draw_filler(rng: random.Random) -> tuple[str, set[str]]:
    clause = rng.choice(_FILLER_CLAUSES)
    return f"{rng.choice(_FILLER_OPENERS)} {clause}.", {f"filler:{clause}"}


def _draw_product(rng: random.Random) -> tuple[str, set[str]]:
    noun = rng.choice(_PRODUCT_NOUNS)
    return f"{rng.choice(_PRODUCT_MODIFIERS)} {noun}", {f"product:{noun}"}


def _draw_landmark(rng: random.Random) -> tuple[str, set[str]]:
    adjective, noun = rng.choice(_LANDMARK_ADJECTIVES), rng.choice(_LANDMARK_NOUNS)
    return f"{adjective} {noun}", {f"landmark:{noun}", f"landmark:{adjective}"}


def _draw_revenue(rng: random.Random) -> tuple[str, set[str]]:
    if rng.random() < 0.7:
        number = str(rng.randint(2, 950))
        return f"{number} million dollars", {f"number:{number}"}
    number = f"{rng.randint(11, 99) / 10:.1f}"
    return f"{number} billion dollars", {f"number:{number}"}


_DRAWERS = {
    "person": _draw_person,
    "city": _draw_from(tuple(city for city, _ in _CITIES), "city"),
    "org": _draw_stemmed(_ORG_STEMS, tuple(f"{{}} {s}" for s in _ORG_SUFFIXES), "org"),
    "university": _draw_stemmed(_UNIVERSITY_STEMS, _UNIVERSITY_FORMS, "university"),
    "field": _draw_from(_FIELDS, "field"),
    "profession": _draw_from(_PROFESSIONS, "profession"),
    "product": _draw_product,
    "award": _draw_stemmed(_AWARD_STEMS, _AWARD_FORMS, "award"),
    "river": _draw_stemmed(_RIVER_STEMS, ("{} River",), "river"),
    "landmark": _draw_landmark,
    "employees": _draw_quantity(40, 95_000, 10, "people"),
    "population": _draw_quantity(8_000, 2_400_000, 1_000, "residents"),
    "elevation": _draw_quantity(4, 2_900, 1, "metres"),
    "weight": _draw_quantity(2, 60, 1, "kilograms"),
    "revenue": _draw_revenue,
    "filler": _draw_filler,
}
_DATED_DRAWERS = {"year": _draw_year, "date": _draw_date}


class _EntityDrawer:
    """Draws entity values for one paragraph, never reusing a value (or a name part)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[str] = set()

    def draw(self, kind: str, years: tuple[int, int] = _EVENT_YEARS) -> str | None:
        """A fresh value of `kind`, or None when the pool is (nearly) used up."""
        for _ in range(_MAX_DRAWS):
            if kind in _DATED_DRAWERS:
                value, keys = _DATED_DRAWERS[kind](self._rng, years)
            else:
                value, keys = _DRAWERS[kind](self._rng)
            if not keys & self._used:
                self._used |= keys
                return value
        return None


# ----------------------------------------------------------------------------------------------
# Paragraphs
# ----------------------------------------------------------------------------------------------


@dataclass
class _Fact:
    """One stated fact: its type, slot values, and where each slot landed in the context."""

    kind: _FactType
    values: dict[str, str]
    template: str
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)


def _make_fact(
    rng: random.Random, drawer: _EntityDrawer, name: str, subject_kind: str, subject: str
) -> _Fact | None:
    """Fill fact type `name` about `subject`, drawing fresh values for its other slots."""
    fact_type = _FACT_TYPES[name]
    values = {subject_kind: subject}
    for slot in fact_type.slots:
        if slot in values or slot == "country":
            continue
        value = drawer.draw(slot, _YEARS_OF_FACT.get(name, _EVENT_YEARS))
        if value is None:
            return None
        values[slot] = value
    if "country" in fact_type.slots:
        values["country"] = _COUNTRY_OF_CITY[values["city"]]
    return _Fact(fact_type, values, rng.choice(fact_type.statements))


def _subject_facts(
    rng: random.Random, drawer: _EntityDrawer, domain: str, subject: str, names: list[str]
) -> list[_Fact]:
    """Facts about one subject, one per fact type name."""
    facts = [_make_fact(rng, drawer, name, domain, subject) for name in names]
    return [fact for fact in facts if fact is not None]


def _core_facts(
    rng: random.Random, drawer: _EntityDrawer, domain: str
) -> tuple[list[str], list[list[_Fact]]]:
    """The paragraph's subjects (the topic first), and 4-8 facts about 2-3 subjects, grouped by subject.

    The subjects share their fact types, so the paragraph names two birth years, two
    headquarters cities, and so on: the answer's type alone does not pick the answer.
    """
    num_subjects = rng.choice(_SUBJECT_COUNTS)
    num_facts = rng.randint(4, 8)
    shared = rng.sample(_DOMAINS[domain], -(-num_facts // num_subjects))
    subjects = [drawer.draw(domain) for _ in range(num_subjects)]
    groups = []
    for index, subject in enumerate(subjects):
        count = num_facts // num_subjects + (index < num_facts % num_subjects)
        groups.append(_subject_facts(rng, drawer, domain, subject, rng.sample(shared, count)))
    return subjects, groups


_Unit = _Fact | str  # a stated fact, or a filler sentence


def _word_count(units: list[_Unit]) -> int:
    """Words in the units once rendered (a fact counts as its template filled with full names)."""
    total = 0
    for unit in units:
        text = unit if isinstance(unit, str) else unit.template.format(**unit.values)
        total += len(text.split())
    return total


def _insert_at_random(rng: random.Random, units: list[_Unit], block: list[_Unit]) -> None:
    """Insert `block` as one run at a random position in `units`."""
    position = rng.randint(0, len(units))
    units[position:position] = block


def _extra_subject_facts(rng: random.Random, drawer: _EntityDrawer, domain: str) -> list[_Fact]:
    """2-4 facts about a new subject (long contexts: more distractors, later answers)."""
    subject = drawer.draw(domain)
    if subject is None:
        return []
    names = rng.sample(_DOMAINS[domain], rng.randint(2, 4))
    return _subject_facts(rng, drawer, domain, subject, names)


def _extra_fact(
    rng: random.Random, drawer: _EntityDrawer, domain: str, units: list[_Unit], subject: str
) -> list[_Fact]:
    """One more fact about `subject`, of a type not yet stated about it (or none left)."""
    stated = {
        unit.kind.name
        for unit in units
        if isinstance(unit, _Fact) and unit.values.get(domain) == subject
    }
    unstated = [name for name in _DOMAINS[domain] if name not in stated]
    if not unstated:
        return []
    fact = _make_fact(rng, drawer, rng.choice(unstated), domain, subject)
    return [] if fact is None else [fact]


def _filler(rng: random.Random, drawer: _EntityDrawer) -> str:
    """A neutral sentence that names no entity, with a clause not yet used if one is left."""
    return drawer.draw("filler") or _draw_filler(rng)[0]


def _lengthen(
    rng: random.Random,
    drawer: _EntityDrawer,
    domain: str,
    units: list[_Unit],
    subjects: list[str],
    target: int,
    long_context: bool,
) -> None:
    """Insert filler and further facts at random places until about `target` words.

    A short context gets more facts about its own subjects; a long one gets new subjects.
    """
    words = _word_count(units)
    while words < target:
        block: list[_Unit] = []
        if rng.random() >= _FILLER_SHARE:
            if long_context:
                block = list(_extra_subject_facts(rng, drawer, domain))
            else:
                block = list(_extra_fact(rng, drawer, domain, units, rng.choice(subjects)))
        block = block or [_filler(rng, drawer)]
        position = rng.randint(0, len(units))
        units[position:position] = block
        words += _word_count(block)


def _render_value(slot: str, value: str, mentioned: set[str], rng: random.Random) -> str:
    """The text for one slot: a person is named in full at first mention, later maybe by surname."""
    if slot != "person":
        return value
    if value not in mentioned:
        mentioned.add(value)
        return value
    return value.rsplit(" ", 1)[1] if rng.random() < _SURNAME_ONLY_SHARE else value


def _render_fact(fact: _Fact, offset: int, mentioned: set[str], rng: random.Random) -> str:
    """Fill the fact's template, recording each slot's span in context coordinates."""
    parts: list[str] = []
    position = offset
    for literal, slot in _parse(fact.template):
        parts.append(literal)
        position += len(literal)
        if slot is None:
            continue
        text = _render_value(slot, fact.values[slot], mentioned, rng)
        fact.spans[slot] = (position, position + len(text))
        parts.append(text)
        position += len(text)
    sentence = "".join(parts)
    return sentence[0].upper() + sentence[1:]


def _render_context(units: list[_Unit], rng: random.Random) -> str:
    """Join facts and filler into one context string, filling in the facts' spans."""
    sentences: list[str] = []
    offset = 0
    mentioned: set[str] = set()
    for unit in units:
        sentence = unit if isinstance(unit, str) else _render_fact(unit, offset, mentioned, rng)
        sentences.append(sentence)
        offset += len(sentence) + 1
    return " ".join(sentences)


@dataclass
class _Paragraph:
    """A rendered context with its title and the facts it states (spans filled in)."""

    title: str
    context: str
    facts: list[_Fact]
    domain: str  # the kind of entity the paragraph is about: person, org or city
    subjects: tuple[str, ...]  # the paragraph's main entities of that kind


def _build_paragraph(rng: random.Random, long_context: bool) -> _Paragraph:
    """One titled paragraph: short (about 60-140 words) or long (about 450-700 words)."""
    domain = rng.choice(_DOMAIN_NAMES)
    drawer = _EntityDrawer(rng)
    subjects, groups = _core_facts(rng, drawer, domain)
    rng.shuffle(groups)
    units: list[_Unit] = [fact for group in groups for fact in group]
    target = rng.randint(*_LONG_WORDS) if long_context else rng.randint(*_SHORT_WORDS)
    _lengthen(rng, drawer, domain, units, subjects, target, long_context)
    context = _render_context(units, rng)
    facts = [unit for unit in units if not isinstance(unit, str)]
    named = tuple(subject for subject in subjects if subject is not None)
    return _Paragraph(subjects[0].replace(" ", "_"), context, facts, domain, named)


# ----------------------------------------------------------------------------------------------
# Questions
# ----------------------------------------------------------------------------------------------


def _late_facts(paragraph: _Paragraph) -> list[_Fact]:
    """Facts stated past the first 384-token window (after `_LATE_ANSWER_WORD` words)."""
    word_starts = [match.start() for match in _WORD.finditer(paragraph.context)]
    if len(word_starts) <= _LATE_ANSWER_WORD:
        return []
    late_from = word_starts[_LATE_ANSWER_WORD]
    return [fact for fact in paragraph.facts if min(fact.spans.values())[0] >= late_from]


def _pick_facts(rng: random.Random, paragraph: _Paragraph, num_questions: int) -> list[_Fact]:
    """Distinct facts to ask about; in a long context, at least one beyond the first window."""
    chosen = rng.sample(paragraph.facts, min(num_questions, len(paragraph.facts)))
    late = _late_facts(paragraph)
    if late and not any(fact in late for fact in chosen):
        chosen[-1] = rng.choice(late)
    return chosen


def _answer_variants(context: str, start: int, end: int, kind: str) -> list[tuple[int, int]]:
    """Other acceptable gold spans around one answer, as a second annotator might mark them."""
    variants = [(start, end)]
    before = context[max(start - 4, 0) : start].lower()
    if kind in ("year", "date") and before[-3:] in ("in ", "on "):
        variants.append((start - 3, end))
    elif kind == "person" and " " in context[start:end]:
        surname = context[start:end].rsplit(" ", 1)[1]
        variants.append((end - len(surname), end))
    elif kind in _QUANTITY_KINDS:
        variants.append((start, start + context[start:end].index(" ")))
    elif kind in _THE_KINDS and before == "the ":
        variants.append((start - 4, end))
    return variants


def _question_record(
    rng: random.Random, paragraph: _Paragraph, fact: _Fact, split: str, example_id: str
) -> tuple[dict, str]:
    """A SQuAD record asking about one slot of `fact`, with the slot's kind."""
    kinds = list(fact.kind.questions)
    kind = rng.choices(kinds, [_ASK_WEIGHT.get(k, 1.0) for k in kinds])[0]
    question = rng.choice(fact.kind.questions[kind]).format(**fact.values)
    question = question[0].upper() + question[1:]
    start, end = fact.spans[kind]
    spans = (
        [(start, end)]
        if split == "train"
        else _answer_variants(paragraph.context, start, end, kind)
    )
    answers = {
        "text": [paragraph.context[s:e] for s, e in spans],
        "answer_start": [s for s, _ in spans],
    }
    record = {
        "id": example_id,
        "title": paragraph.title,
        "context": paragraph.context,
        "question": question,
        "answers": answers,
    }
    return record, kind


# ----------------------------------------------------------------------------------------------
# Unanswerable questions (SQuAD v2.0): about a fact the paragraph does not state, or about an
# entity it does not mention. Drawn from their own random stream, so the paragraphs and the
# answerable questions are those of the same call without unanswerable ones.
# ----------------------------------------------------------------------------------------------


def _template_slots(template: str) -> set[str]:
    return {name for _, name in _parse(template) if name is not None}


def _capitalised(question: str) -> str:
    return question[0].upper() + question[1:]


def _unstated_fact_question(rng: random.Random, paragraph: _Paragraph) -> str | None:
    """A question about one of the paragraph's subjects, of a fact type never stated about it
    (e.g. "What is X's profession?" when no sentence gives X's profession)."""
    if not paragraph.subjects:
        return None
    domain, subject = paragraph.domain, rng.choice(paragraph.subjects)
    stated = {fact.kind.name for fact in paragraph.facts if fact.values.get(domain) == subject}
    templates = [
        template
        for name in _DOMAINS[domain]
        if name not in stated
        for slot, slot_templates in _FACT_TYPES[name].questions.items()
        if slot != domain
        for template in slot_templates
        if _template_slots(template) == {domain}
    ]
    if not templates:
        return None
    return _capitalised(rng.choice(templates).format(**{domain: subject}))


def _unmentioned(rng: random.Random, kind: str, context: str) -> str | None:
    """A fresh entity of `kind` none of whose words occur in the context."""
    words = set(re.findall(r"\w+", context))
    for _ in range(_MAX_DRAWS):
        value, _ = _DRAWERS[kind](rng)
        if not words & set(re.findall(r"\w+", value)):
            return value
    return None


def _unmentioned_entity_question(rng: random.Random, paragraph: _Paragraph) -> str | None:
    """A question of a stated fact with one named entity swapped for one the paragraph never
    mentions (e.g. "When was Y born?" where only X's birth is stated)."""
    fact = rng.choice(paragraph.facts)
    options = [
        (template, slot)
        for kind, templates in fact.kind.questions.items()
        for template in templates
        for slot in sorted(_template_slots(template))
        if slot in _DOMAINS and slot != kind
    ]
    if not options:
        return None
    template, slot = rng.choice(options)
    value = _unmentioned(rng, slot, paragraph.context)
    if value is None:
        return None
    return _capitalised(template.format(**{**fact.values, slot: value}))


def _unanswerable_record(rng: random.Random, paragraph: _Paragraph, record: dict) -> dict | None:
    """`record` with a question its context cannot answer and no answers, or None."""
    makers = [_unstated_fact_question, _unmentioned_entity_question]
    rng.shuffle(makers)
    for make in makers:
        question = make(rng, paragraph)
        if question is not None:
            return {**record, "question": question, "answers": {"text": [], "answer_start": []}}
    return None


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _check_arguments(
    num_examples: int, split: str, long_context_fraction: float, unanswerable_fraction: float
) -> None:
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if not split:
        raise ValueError("split must be a non-empty string")
    if not 0.0 <= long_context_fraction <= 1.0:
        raise ValueError(f"long_context_fraction must be in [0, 1], got {long_context_fraction}")
    if not 0.0 <= unanswerable_fraction <= 1.0:
        raise ValueError(f"unanswerable_fraction must be in [0, 1], got {unanswerable_fraction}")


UNANSWERABLE = "unanswerable"  # the annotated kind of a question without an answer


def iter_annotated_examples(
    num_examples: int,
    seed: int,
    split: str = "train",
    long_context_fraction: float = 0.1,
    unanswerable_fraction: float = 0.0,
) -> Iterator[tuple[dict, str]]:
    """Yield (SQuAD record, answer kind) pairs; the kind (e.g. "person", "year", or
    `UNANSWERABLE`) is for analysis.

    Output depends only on the arguments, and a smaller `num_examples` yields a prefix of a
    larger one.
    """
    _check_arguments(num_examples, split, long_context_fraction, unanswerable_fraction)
    rng = random.Random(f"qaexp-synthetic-{seed}-{split}")
    no_answer_rng = random.Random(f"qaexp-synthetic-{seed}-{split}-unanswerable")
    index = 0
    while index < num_examples:
        paragraph = _build_paragraph(rng, rng.random() < long_context_fraction)
        for fact in _pick_facts(rng, paragraph, rng.randint(3, 5)):
            if index == num_examples:
                return
            record, kind = _question_record(rng, paragraph, fact, split, f"syn-{split}-{index:06d}")
            index += 1
            # No draw at all when the share is 0, so such output never changes.
            if unanswerable_fraction and no_answer_rng.random() < unanswerable_fraction:
                unanswerable = _unanswerable_record(no_answer_rng, paragraph, record)
                if unanswerable is not None:
                    record, kind = unanswerable, UNANSWERABLE
            yield record, kind


def iter_examples(
    num_examples: int,
    seed: int,
    split: str = "train",
    long_context_fraction: float = 0.1,
    unanswerable_fraction: float = 0.0,
) -> Iterator[dict]:
    """Yield `num_examples` SQuAD-schema records (see `generate_examples`)."""
    for record, _ in iter_annotated_examples(
        num_examples, seed, split, long_context_fraction, unanswerable_fraction
    ):
        yield record


def generate_examples(
    num_examples: int,
    seed: int,
    split: str = "train",
    long_context_fraction: float = 0.1,
    unanswerable_fraction: float = 0.0,
) -> list[dict]:
    """Return `num_examples` SQuAD-schema records.

    Each record is {"id", "title", "context", "question", "answers": {"text": [...],
    "answer_start": [...]}}. The train split has one answer per question; other splits have
    1-3 gold variants (e.g. "1987" and "in 1987"), like the official dev set. About
    `long_context_fraction` of paragraphs run to 450-700 words; the rest to 60-140.

    About `unanswerable_fraction` of the questions (SQuAD v2.0) ask about a fact type the
    paragraph does not state about an entity, or about an entity it never mentions; their
    answers are ``{"text": [], "answer_start": []}``. They take the place of answerable
    questions: ids, titles, contexts and the other questions stay those of the same call
    with no unanswerable share (the default, 0: output as before the option existed).
    """
    return list(
        iter_examples(num_examples, seed, split, long_context_fraction, unanswerable_fraction)
    )
