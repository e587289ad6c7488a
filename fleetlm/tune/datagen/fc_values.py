"""Value pools and samplers for the function-calling data (:mod:`fc_specs` uses them).

A sampler takes a ``random.Random`` and returns a value. Most values are copied into the
question as :func:`say` writes them. A :class:`Said` value is written one way in the question
and held another way in the call ("5%" for a rate the description asks as a decimal, "Austin"
for "City and state, e.g. Springfield, IL", "March 3, 2025" for a YYYY-MM-DD date, "the Prado
Museum" for a museum's name, "2.5 million" for an amount), so that the model learns to read
the parameter's description rather than copy words; :func:`gold` gives the call's form.
The other side is taught too: a city under a plain "City" description is copied as the
question writes it ("Boston", or "Seattle, Washington"), not given a state code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

CITIES = ["Denver", "Lisbon", "Osaka", "Nairobi", "Toronto", "Hamburg", "Lima", "Krakow", "Austin", "Lyon",
          "Seoul", "Cairo", "Dublin", "Perth", "Bogota", "Oslo", "Mumbai", "Porto", "Accra", "Milan", "Quito"]
PEOPLE = ["Maria Lopez", "James Smith", "Aisha Khan", "Kenji Tanaka", "Sofia Rossi", "Liam Murphy", "Olga Petrova",
          "Diego Garcia", "Priya Patel", "Omar Haddad", "Grace Okafor", "Hiro Sato", "Elena Novak", "Arjun Singh"]
COMPANIES = ["Nimbus Labs", "Orchard Foods", "Bluefin Energy", "Kestrel Motors", "Lumen Health", "Quarry Bank",
             "Tidewater Shipping", "Helix Robotics", "Saffron Media", "Granite Insurance"]
TICKERS = ["NMBS", "ORCH", "BLFN", "KSTR", "LUMN", "QRRY", "TDWR", "HLX", "SFRN", "GRNT"]
LANGS = ["English", "French", "Spanish", "German", "Japanese", "Portuguese", "Italian", "Korean", "Swahili"]
GENRES = ["jazz", "rock", "classical", "hip hop", "folk", "electronic", "blues", "reggae"]
FOODS = ["lasagna", "pad thai", "banana bread", "chicken curry", "falafel", "tomato soup", "pancakes", "risotto"]
ELEMENTS = ["carbon", "oxygen", "iron", "helium", "sodium", "copper", "nitrogen", "gold"]
SPECIES = ["red fox", "snow leopard", "barn owl", "green turtle", "honey bee", "gray wolf", "koala", "orca"]
TOPICS = ["renewable energy", "ancient Rome", "machine learning", "coral reefs", "the French Revolution",
          "black holes", "urban gardening", "the Silk Road", "volcanoes", "jazz history"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


US_CITIES = [("New York", "New York", "NY"), ("Los Angeles", "California", "CA"), ("Chicago", "Illinois", "IL"),
             ("Houston", "Texas", "TX"), ("Phoenix", "Arizona", "AZ"), ("Philadelphia", "Pennsylvania", "PA"),
             ("San Antonio", "Texas", "TX"), ("San Diego", "California", "CA"), ("Dallas", "Texas", "TX"),
             ("Austin", "Texas", "TX"), ("Jacksonville", "Florida", "FL"), ("Columbus", "Ohio", "OH"),
             ("Charlotte", "North Carolina", "NC"), ("San Francisco", "California", "CA"),
             ("Indianapolis", "Indiana", "IN"), ("Seattle", "Washington", "WA"), ("Denver", "Colorado", "CO"),
             ("Boston", "Massachusetts", "MA"), ("Nashville", "Tennessee", "TN"), ("Detroit", "Michigan", "MI"),
             ("Portland", "Oregon", "OR"), ("Las Vegas", "Nevada", "NV"), ("Memphis", "Tennessee", "TN"),
             ("Baltimore", "Maryland", "MD"), ("Milwaukee", "Wisconsin", "WI"), ("Albuquerque", "New Mexico", "NM"),
             ("Sacramento", "California", "CA"), ("Atlanta", "Georgia", "GA"), ("Miami", "Florida", "FL"),
             ("Minneapolis", "Minnesota", "MN"), ("New Orleans", "Louisiana", "LA"), ("Cleveland", "Ohio", "OH"),
             ("Pittsburgh", "Pennsylvania", "PA"), ("Salt Lake City", "Utah", "UT"), ("Orlando", "Florida", "FL")]
CURRENCY_NAMES = {"USD": ["US dollars", "dollars"], "EUR": ["euros"], "GBP": ["British pounds", "pounds sterling"],
                  "JPY": ["Japanese yen", "yen"], "CAD": ["Canadian dollars"], "CHF": ["Swiss francs"],
                  "INR": ["Indian rupees"], "BRL": ["Brazilian reais"], "KES": ["Kenyan shillings"],
                  "AUD": ["Australian dollars"]}
EVENTS = ["Moon landing", "Cold War", "Renaissance", "French Revolution", "Battle of Hastings", "Treaty of Versailles",
          "Boston Tea Party", "Industrial Revolution", "Great Fire of London", "Congress of Vienna",
          "California Gold Rush", "Meiji Restoration"]
LANDMARKS = ["Prado Museum", "Rijksmuseum", "Uffizi Gallery", "National Gallery", "Natural History Museum",
             "Guggenheim Museum", "Colosseum", "Golden Gate Bridge", "Sydney Opera House", "Tower of London",
             "Brandenburg Gate", "Acropolis", "Science Museum", "Vatican Museums", "Alhambra"]


@dataclass(frozen=True)
class Said:
    """A value the question writes as ``text`` and the call holds as ``value``."""

    text: str
    value: object


def gold(value):
    """The call's form of a drawn value (``Said`` -> its value, inside lists and dicts too)."""
    if isinstance(value, Said):
        return value.value
    if isinstance(value, list):
        return [gold(v) for v in value]
    if isinstance(value, dict):
        return {k: gold(v) for k, v in value.items()}
    return value


def percent_decimal(r: random.Random) -> Said:
    """A rate the call wants as a decimal; the question says "5%" or "5 percent" (or 0.05)."""
    pct = r.choice([1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25])
    value = round(pct / 100, 4)
    return Said(r.choice([f"{pct}%", f"{pct} percent", f"{pct}%", str(value)]), value)


def us_city(r: random.Random) -> Said:
    """"City, ST": the question names the city alone, with its state, or with the state code."""
    city, state, code = r.choice(US_CITIES)
    return Said(r.choice([city, city, city, f"{city}, {state}", f"{city}, {code}"]), f"{city}, {code}")


def plain_city(r: random.Random) -> str:
    """A city for a plain "City" description: copied as the question says it, US cities included
    (so that "Boston" stays "Boston" unless the description asks for "City, ST")."""
    if r.random() < 0.5:
        return r.choice(CITIES)
    city, state, _ = r.choice(US_CITIES)
    return f"{city}, {state}" if r.random() < 0.3 else city


def currency_code(r: random.Random) -> Said:
    """An ISO code the question names in words ("Japanese yen") or as the code itself."""
    code = r.choice(list(CURRENCY_NAMES))
    return Said(r.choice(CURRENCY_NAMES[code] + [code]), code)


def the_name(pool: list[str]):
    """A name the question says with "the" in front ("the Prado Museum") and the call without."""
    def draw(r: random.Random) -> Said:
        name = r.choice(pool)
        return Said(f"the {name}" if r.random() < 0.7 else name, name)
    return draw


landmark = the_name(LANDMARKS)
historical_event = the_name(EVENTS)


def millions(lo: float, hi: float):
    """Large amounts the question says as "2.5 million"; the call holds 2500000."""
    def draw(r: random.Random) -> Said:
        m = round(r.uniform(lo, hi), r.choice([0, 1]))
        m = int(m) if m == int(m) else m
        return Said(f"{m} million", int(round(m * 1_000_000)))
    return draw


def num(lo: float, hi: float, dec: int = 0):
    """A number sampler: ints when dec == 0, else floats with up to `dec` decimals."""
    def draw(r: random.Random):
        return r.randint(int(lo), int(hi)) if dec == 0 else round(r.uniform(lo, hi), r.randint(1, dec))
    return draw


def pick(pool: list):
    return lambda r: r.choice(pool)


def many(inner, lo: int, hi: int):
    def draw(r: random.Random):
        out: list = []
        while len(out) < r.randint(lo, hi):
            v = inner(r)
            if v not in out:
                out.append(v)
        return out
    return draw


def date(r: random.Random) -> str:
    return f"{r.randint(2023, 2026)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"


DATE_FORMATS = {"YYYY-MM-DD": "{y}-{m:02d}-{d:02d}", "MM-DD-YYYY": "{m:02d}-{d:02d}-{y}",
                "DD/MM/YYYY": "{d:02d}/{m:02d}/{y}", "MM/DD/YYYY": "{m:02d}/{d:02d}/{y}"}


def date_in(fmt: str):
    """A date the call holds in ``fmt`` (a key of DATE_FORMATS, which the parameter's description
    names) and the question writes in words ("March 3, 2025", "3 March 2025") or in the format."""
    def draw(r: random.Random) -> Said:
        y, m, d = r.randint(2023, 2026), r.randint(1, 12), r.randint(1, 28)
        month = MONTHS[m - 1]
        call = DATE_FORMATS[fmt].format(y=y, m=m, d=d)
        return Said(r.choice([call, f"{month} {d}, {y}", f"{d} {month} {y}", f"{month[:3]} {d}, {y}"]), call)
    return draw


spoken_date = date_in("YYYY-MM-DD")


def say(value) -> str:
    """How a value is written in a question."""
    if isinstance(value, Said):
        return value.text
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        parts = [say(v) for v in value]
        return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return str(value)


# ---------- values said in words (used by fc_specs_more) ----------

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve"]
COMPOUNDING = {"annually": 1, "semi-annually": 2, "quarterly": 4, "monthly": 12, "weekly": 52, "daily": 365}
SPANS = {"the next week": 7, "the next two weeks": 14, "the coming month": 30, "the next 3 days": 3,
         "the next 10 days": 10}
CITY_COUNTRY = [("Tokyo", "Japan"), ("Sydney", "Australia"), ("London", "United Kingdom"), ("Paris", "France"),
                ("Osaka", "Japan"), ("Lisbon", "Portugal"), ("Nairobi", "Kenya"), ("Toronto", "Canada"),
                ("Hamburg", "Germany"), ("Lima", "Peru"), ("Krakow", "Poland"), ("Seoul", "South Korea"),
                ("Cairo", "Egypt"), ("Dublin", "Ireland"), ("Bogota", "Colombia"), ("Oslo", "Norway"),
                ("Mumbai", "India"), ("Accra", "Ghana"), ("Milan", "Italy"), ("Quito", "Ecuador")]


def counted(lo: int, hi: int):
    """A small count the question says as a word ("five") or in digits; the call holds the int."""
    def draw(r: random.Random):
        n = r.randint(lo, hi)
        return Said(NUMBER_WORDS[n], n) if n < len(NUMBER_WORDS) and r.random() < 0.6 else n
    return draw


def dollars(lo: int, hi: int):
    """A money amount said with a thousands separator ("$12,500", "12,500 dollars"); the call
    holds the plain number."""
    def draw(r: random.Random):
        v = r.randrange(lo, hi, 500 if hi > 5000 else 50)
        return Said(r.choice([f"${v:,}", f"{v:,} dollars", f"${v:,}"]), v) if v >= 1000 else v
    return draw


def as_percent(r: random.Random) -> Said:
    """A rate whose description says "as a percentage": "6%" stays 6.0 in the call."""
    pct = r.choice([1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 10, 12])
    return Said(r.choice([f"{pct}%", f"{pct} percent"]), float(pct))


def worded(meanings: dict):
    """A value the question says in words and the call holds as their meaning."""
    def draw(r: random.Random) -> Said:
        words = r.choice(list(meanings))
        return Said(words, meanings[words])
    return draw


compounding = worded(COMPOUNDING)  # periods per year: "monthly" -> 12
span_days = worded(SPANS)  # days: "the next week" -> 7


def minutes_as_seconds(r: random.Random) -> Said:
    """A duration the call wants in seconds, said in minutes ("3 minutes" -> 180)."""
    m = r.randint(1, 12)
    return Said(f"{m} minute" + ("s" if m > 1 else ""), m * 60)


def rest_or_speed(r: random.Random):
    """An initial speed: "rest" (0) or "12 m/s"."""
    return Said("rest", 0) if r.random() < 0.4 else Said(f"{(v := r.randint(1, 40))} m/s", v)


def linked(pairs: list[tuple]):
    """Two samplers that draw one pair: ``first`` picks a pair and returns its first item,
    ``second`` returns the second item of the pair ``first`` drew last. A spec lists the
    parameter using ``first`` before the one using ``second`` (parameters are drawn in order)."""
    last: dict = {}

    def first(r: random.Random):
        last["pair"] = r.choice(pairs)
        return last["pair"][0]

    def second(r: random.Random):
        return last["pair"][1]
    return first, second
