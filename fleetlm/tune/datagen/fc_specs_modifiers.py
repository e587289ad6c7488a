"""Templated functions (not BFCL's) whose optional parameters the question sets in passing:
a word before a noun ("a *small* *green* beetle", "*IMAX* screenings", "*two* tickets", "a
*felony* record", "*detailed* air quality"), or a short clause in the middle of the sentence
("on *Switch*", "with a *sea* view"), rather than a trailing parenthesis.

Why: the first expert omitted such optionals (32 of its 164 misses on BFCL simple_python were
an optional value the question states, e.g. "a small green bird" without ``size``) because the
first two spec sets (:mod:`fc_specs`, :mod:`fc_specs_more`) mostly mention optionals with a
fixed phrase appended at the end. These specs are opt-in (``fc.py --modifier-specs``), so the
data of the earlier recipe stays byte-identical for its seed.

Same :class:`fc_specs.Spec` format and rules: a template names an optional as ``{param?}`` and
its phrase (here ``"{v} "`` before a noun, or a clause) is filled in only when the gold call
holds it.
"""

from __future__ import annotations

from fleetlm.tune.datagen.fc_specs import ARR, BOOL, INT, STR, E, P, S, opt
from fleetlm.tune.datagen.fc_values import COMPANIES, PEOPLE, counted, num, pick, plain_city

ARTISTS = ["Nora Vale", "The Driftwoods", "Kai Mercer", "Luna Park Trio", "DJ Solano", "Marcus Reed"]
GAMES = ["Star Harbor", "Pixel Knights", "Rally Storm", "Deep Orbit", "Castle Siege"]
TEAMS = ["Riverside FC", "Northport United", "Valley Rangers", "Harbor City SC"]
REGIONS = ["Oregon", "Bavaria", "Ontario", "Queensland", "Catalonia", "Texas"]

SPECS = [
    S("insect_identify_field", "Identify an insect from what was seen.",
      [P("habitat", STR, "Where it was seen", pick(["garden", "forest", "meadow", "pond", "desert"])),
       opt(E("size", "Rough size", ["tiny", "small", "large"]), "{v} "),
       opt(P("color", STR, "Main color", pick(["green", "red", "black", "yellow", "blue"])), "{v} ")],
      ["Identify a {size?}{color?}beetle I found in the {habitat}.",
       "What is this {size?}{color?}insect from the {habitat}?",
       "I saw a {size?}{color?}bug near the {habitat}; what could it be?"], "nature"),
    S("screenings_nearby_list", "Film screenings in a city.",
      [P("city", STR, "City", plain_city),
       opt(E("screen_format", "Screen format", ["IMAX", "3D", "Dolby", "standard"]), "{v} "),
       opt(P("days", INT, "How many days ahead", counted(2, 7)), " for the next {v} days")],
      ["List {screen_format?}screenings in {city}{days?}.",
       "Which {screen_format?}films are on in {city}{days?}?"], "media"),
    S("gig_tickets_order", "Order tickets for an artist's next show.",
      [P("artist", STR, "Performer", pick(ARTISTS)), P("city", STR, "City of the show", plain_city),
       opt(P("quantity", INT, "Number of tickets", counted(2, 6)), "{v} ", 1),
       opt(E("seating", "Seat area", ["floor", "balcony", "VIP"]), "{v} ")],
      ["Get me {quantity?}{seating?}tickets for the next {artist} show in {city}.",
       "Book {quantity?}{seating?}seats to see {artist} in {city}."], "media"),
    S("county_records_search", "Search court records of a person in a county.",
      [P("person", STR, "Full name", pick(PEOPLE)), P("county", STR, "County", pick(["Marin", "Travis", "Cook"])),
       opt(E("record_type", "Kind of record", ["felony", "misdemeanor", "civil", "traffic"]), "{v} "),
       opt(P("include_details", BOOL, "Include the full details", pick([True])), "detailed ", False)],
      ["Find {include_details?}{record_type?}records for {person} in {county} County.",
       "Look up any {include_details?}{record_type?}records of {person} in {county} County."], "law"),
    S("concerts_upcoming_find", "Upcoming concerts in a city.",
      [P("city", STR, "City", plain_city),
       opt(E("genre", "Music genre", ["Rock", "Jazz", "Pop", "Classical", "Hip hop"]), "{v} "),
       opt(P("max_price", INT, "Highest ticket price in dollars", num(30, 200)), " under ${v}")],
      ["Find a {genre?}concert in {city}{max_price?}.", "Any {genre?}shows in {city}{max_price?} this month?"],
      "media"),
    S("company_lawsuits_list", "Lawsuits involving a company.",
      [P("company", STR, "Company name", pick(COMPANIES)), P("since_year", INT, "First year", num(2005, 2022)),
       opt(E("category", "Kind of lawsuit", ["patent", "trademark", "antitrust", "employment"]), "{v} ")],
      ["Find {category?}lawsuits involving {company} since {since_year}.",
       "List the {category?}cases against {company} from {since_year} on."], "law"),
    S("air_report_city", "Air quality report for a city.",
      [P("city", STR, "City", plain_city),
       opt(P("detailed", BOOL, "Include pollutant-level detail", pick([True])), "detailed ", False),
       opt(P("days_back", INT, "Days of history", counted(2, 7)), " over the last {v} days")],
      ["Give me the {detailed?}air quality report for {city}{days_back?}.",
       "Show {detailed?}air quality data for {city}{days_back?}."], "weather"),
    S("player_game_stats", "A player's statistics in a video game.",
      [P("game", STR, "Game title", pick(GAMES)), P("player", STR, "Player's user name", pick(["sam99", "zoe_k", "rex"])),
       opt(E("platform", "Platform", ["PC", "Switch", "PS5", "Xbox"]), " on {v}")],
      ["Fetch the stats of {player} in '{game}'{platform?}.", "How is {player} doing in {game}{platform?}?"],
      "media"),
    S("hotel_booking_view", "Book a hotel room.",
      [P("city", STR, "City", plain_city), P("nights", INT, "Number of nights", counted(2, 6)),
       opt(E("room_type", "Room type", ["single", "double", "suite"]), "{v} "),
       opt(E("view", "Room view", ["sea", "city", "garden"]), " with a {v} view")],
      ["Book a {room_type?}room{view?} in {city} for {nights} nights.",
       "I need a {room_type?}room in {city}{view?} for {nights} nights."], "travel"),
    S("quiz_questions_make", "Make quiz questions on a topic.",
      [P("topic", STR, "Topic", pick(["volcanoes", "the Roman Empire", "algebra", "chemistry", "jazz history"])),
       opt(P("count", INT, "How many questions", counted(2, 10)), "{v} ", 5),
       opt(E("difficulty", "Difficulty", ["easy", "medium", "hard"]), "{v} ")],
      ["Write {count?}{difficulty?}quiz questions about {topic}.",
       "Give me {count?}{difficulty?}questions on {topic} for a quiz."], "education"),
    S("team_season_stats", "A team's statistics for a season.",
      [P("team", STR, "Team name", pick(TEAMS)), P("season", STR, "Season, e.g. 2021-2022",
                                                   pick(["2019-2020", "2021-2022", "2022-2023"])),
       opt(P("metrics", ARR, "Which statistics", lambda r: r.sample(["goals", "assists", "clean sheets"],
                                                                       r.randint(1, 2)),
             items={"type": "string", "enum": ["goals", "assists", "clean sheets"]}), "{v} ")],
      ["Get the {metrics?}numbers of {team} in the {season} season.",
       "Show me {team}'s {metrics?}stats for {season}."], "sports"),
    S("energy_savings_estimate", "Estimated savings from switching energy source.",
      [P("source", STR, "New energy source", pick(["solar", "wind", "geothermal"])),
       P("months", INT, "Duration in months", counted(2, 12)),
       opt(P("region", STR, "Region", pick(REGIONS)), " in {v}")],
      ["How much would I save switching to {source} power for {months} months{region?}?",
       "Estimate savings from {source} energy over {months} months{region?}."], "science"),
]
