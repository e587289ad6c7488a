"""The function-calling expert's own templated functions (not BFCL's): python-style tools with
typed parameters and the user questions that call them. Value pools and samplers (including
values said differently from the call's form) are in :mod:`fc_values`.

A :class:`Spec` is one function: its OpenAI tool (``tool()``), the parameters' value samplers
and question templates. Templates name required parameters as ``{param}`` (``{param[key]}``
for a field of an object parameter) and optional ones as ``{param?}``; an optional parameter
is mentioned (its ``phrase`` filled in) only sometimes, and the gold call holds it only then —
defaults are left out when the question does not ask for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetlm.tune.datagen.fc_values import (CITIES, COMPANIES, ELEMENTS, FOODS, GENRES, LANGS, MONTHS, PEOPLE,
                                            SPECIES, TICKERS, TOPICS, currency_code, landmark, many, millions, num,
                                            date_in, historical_event, percent_decimal, pick, plain_city,
                                            spoken_date, us_city)


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict  # JSON schema of the value (type, enum, items, properties...)
    draw: object  # random.Random -> value
    required: bool = True
    phrase: str = ""  # optional params: the text that mentions the value, with {v}
    fields: dict = field(default_factory=dict)  # object params: key -> (sampler, schema)


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    params: tuple[Param, ...]
    templates: tuple[str, ...]
    domain: str

    def tool(self) -> dict:
        props = {p.name: p.schema for p in self.params}
        req = [p.name for p in self.params if p.required]
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": {"type": "object", "properties": props,
                                                                "required": req}}}


def P(name, kind, desc, draw, **kw) -> Param:
    schema = {"type": kind, "description": desc}
    for key in ("enum", "items", "default"):
        if key in kw:
            schema[key] = kw.pop(key)
    return Param(name, schema, draw, **kw)


def E(name, desc, values, **kw) -> Param:
    return P(name, "string", desc, pick(values), enum=list(values), **kw)


def O(name, desc, fields: dict, **kw) -> Param:
    """An object parameter; fields: key -> (type, description, sampler)."""
    schema = {"type": "object", "description": desc,
              "properties": {k: {"type": t, "description": d} for k, (t, d, _) in fields.items()},
              "required": list(fields)}
    return Param(name, schema, lambda r: {k: s(r) for k, (_, _, s) in fields.items()}, **kw)


def opt(param: Param, phrase: str, default=None) -> Param:
    schema = dict(param.schema)
    if default is not None:
        schema["default"] = default
        schema["description"] += f". Default {default}"
    return Param(param.name, schema, param.draw, False, phrase)


def S(name, desc, params, templates, domain) -> Spec:
    return Spec(name, desc, tuple(params), tuple(templates), domain)


INT, NUM, STR, BOOL, ARR = "integer", "number", "string", "boolean", "array"
SPECS = [
    S("cylinder_volume_calc", "Compute the volume of a right circular cylinder.",
      [P("radius", NUM, "Base radius", num(1, 30, 1)), P("height", NUM, "Height", num(1, 60, 1)),
       opt(E("unit", "Length unit", ["cm", "m", "in", "ft"]), " (measured in {v})", "cm")],
      ["What is the volume of a cylinder with radius {radius} and height {height}{unit?}?",
       "Find the volume of a cylinder whose base radius is {radius} and whose height is {height}{unit?}."], "math"),
    S("trapezoid_area", "Area of a trapezoid from its two parallel sides and its height.",
      [P("base_a", NUM, "First parallel side", num(1, 40)), P("base_b", NUM, "Second parallel side", num(1, 40)),
       P("height", NUM, "Height", num(1, 30))],
      ["Calculate the area of a trapezoid with parallel sides {base_a} and {base_b} and height {height}.",
       "A trapezoid has bases of {base_a} and {base_b} units and is {height} units tall. What's its area?"], "math"),
    S("integer_gcd", "Greatest common divisor of two integers.",
      [P("a", INT, "First integer", num(2, 500)), P("b", INT, "Second integer", num(2, 500))],
      ["What is the greatest common divisor of {a} and {b}?", "Find the GCD of {a} and {b}."], "math"),
    S("binomial_coefficient", "Number of ways to choose k items from n (n choose k).",
      [P("n", INT, "Total items", num(5, 60)), P("k", INT, "Items chosen", num(1, 5))],
      ["How many ways can I choose {k} items out of {n}?", "Compute {n} choose {k}."], "math"),
    S("quadratic_roots_solver", "Real roots of a*x^2 + b*x + c = 0.",
      [P("a", INT, "Coefficient of x^2", num(1, 9)), P("b", INT, "Coefficient of x", num(-20, 20)),
       P("c", INT, "Constant term", num(-30, 30))],
      ["Solve the quadratic equation with a={a}, b={b} and c={c}.",
       "Find the roots of the quadratic with coefficients a = {a}, b = {b}, c = {c}."], "math"),
    S("list_statistics", "Summary statistic of a list of numbers.",
      [P("values", ARR, "The numbers", many(num(1, 99), 3, 6), items={"type": "integer"}),
       opt(E("stat", "Which statistic", ["median", "stdev", "variance", "max"]), " (I want the {v})", "mean")],
      ["Summarize these numbers: {values}{stat?}.", "Compute statistics of the list {values}{stat?}."], "math"),
    S("prime_check", "Tell whether an integer is prime.",
      [P("number", INT, "The integer to test", num(2, 100000))],
      ["Is {number} a prime number?", "Check whether {number} is prime."], "math"),
    S("kinetic_energy_calc", "Kinetic energy of a moving body in joules.",
      [P("mass_kg", NUM, "Mass in kilograms", num(1, 500, 1)), P("speed_ms", NUM, "Speed in m/s", num(1, 90, 1))],
      ["What is the kinetic energy of a {mass_kg} kg object moving at {speed_ms} m/s?",
       "An object of mass {mass_kg} kg travels at {speed_ms} meters per second. Compute its kinetic energy."],
      "physics"),
    S("ohms_law_current", "Electric current through a resistor from voltage and resistance.",
      [P("voltage", NUM, "Voltage in volts", num(1, 240)), P("resistance", NUM, "Resistance in ohms", num(1, 1000))],
      ["What current flows through a {resistance} ohm resistor at {voltage} volts?",
       "Find the current when {voltage} V is applied across {resistance} ohms."], "physics"),
    S("projectile_range", "Horizontal range of a projectile launched over flat ground.",
      [P("velocity", NUM, "Launch speed in m/s", num(5, 100)), P("angle_deg", NUM, "Launch angle in degrees",
                                                                   num(10, 80)),
       opt(P("gravity", NUM, "Gravitational acceleration in m/s^2", pick([1.62, 3.71, 24.79])),
           " where gravity is {v} m/s^2", 9.81)],
      ["How far does a projectile travel if launched at {velocity} m/s at {angle_deg} degrees{gravity?}?",
       "Compute the range of a shot fired at {angle_deg} degrees with speed {velocity} m/s{gravity?}."], "physics"),
    S("gas_pressure_ideal", "Pressure of an ideal gas from moles, temperature and volume.",
      [P("moles", NUM, "Amount of gas in mol", num(1, 20, 1)), P("temperature_k", NUM, "Temperature in kelvin",
                                                                   num(200, 600)),
       P("volume_l", NUM, "Volume in litres", num(1, 100))],
      ["What is the pressure of {moles} mol of an ideal gas at {temperature_k} K in a {volume_l} L container?"],
      "physics"),
    S("element_property_lookup", "Look up a property of a chemical element.",
      [P("element", STR, "Element name", pick(ELEMENTS)),
       E("property", "Property wanted", ["atomic_mass", "melting_point", "density", "electronegativity"])],
      ["What is the {property} of {element}?", "Look up the {property} for {element}."], "science"),
    S("species_range_info", "Geographic range and population trend of an animal species.",
      [P("species", STR, "Common name of the species", pick(SPECIES)),
       opt(P("include_trend", BOOL, "Include the population trend", pick([True])), " and include its population trend",
           False)],
      ["Where does the {species} live{include_trend?}?", "Give me the range of the {species}{include_trend?}."],
      "science"),
    S("loan_monthly_payment", "Monthly payment of a fixed-rate loan.",
      [P("principal", NUM, "Amount borrowed", num(1000, 500000)), P("annual_rate", NUM, "Annual interest rate in percent",
                                                                    num(1, 12, 2)),
       P("years", INT, "Term in years", num(1, 30))],
      ["What is the monthly payment on a {principal} dollar loan at {annual_rate}% for {years} years?",
       "I'm borrowing {principal} at an annual rate of {annual_rate} percent over {years} years. Monthly payment?"],
      "finance"),
    S("compound_growth", "Future value of an investment with compound interest.",
      [P("initial", NUM, "Starting amount", num(100, 100000)),
       P("rate", NUM, "Yearly rate as a decimal, e.g. 0.05 for 5%", percent_decimal),
       P("years", INT, "Number of years", num(1, 40)),
       opt(P("times_per_year", INT, "Compounding periods per year", pick([4, 12, 365])),
           ", compounded {v} times a year", 1)],
      ["How much will {initial} grow to in {years} years at a rate of {rate}{times_per_year?}?",
       "Compute the future value of {initial} invested for {years} years at {rate} interest{times_per_year?}."],
      "finance"),
    S("stock_quote_fetch", "Latest price of a stock by ticker symbol.",
      [P("ticker", STR, "Ticker symbol, e.g. ACME", pick(TICKERS)),
       opt(E("exchange", "Stock exchange", ["NYSE", "NASDAQ", "LSE", "TSX"]), " on the {v}", "NASDAQ")],
      ["What's the current price of {ticker}{exchange?}?", "Get me a quote for {ticker}{exchange?}."], "finance"),
    S("currency_convert_amount", "Convert an amount between currencies.",
      [P("amount", NUM, "Amount to convert", num(1, 5000, 2)),
       P("from_currency", STR, "Three-letter ISO code to convert from, e.g. USD", currency_code),
       P("to_currency", STR, "Three-letter ISO code to convert to, e.g. EUR", currency_code)],
      ["Convert {amount} {from_currency} to {to_currency}.", "How much is {amount} {from_currency} in {to_currency}?"],
      "finance"),
    S("company_revenue_report", "Annual revenue of a company for a given year.",
      [P("company", STR, "Company name", pick(COMPANIES)), P("year", INT, "Fiscal year", num(2010, 2024))],
      ["What was the revenue of {company} in {year}?", "Show {company}'s {year} annual revenue."], "finance"),
    S("weather_forecast_days", "Weather forecast for a city.",
      [P("city", STR, "City name", plain_city), P("days", INT, "Days ahead (1-14)", num(1, 14)),
       opt(E("units", "Temperature units", ["celsius", "fahrenheit"]), " in {v}", "celsius")],
      ["What's the weather forecast for {city} for the next {days} days{units?}?",
       "Give me a {days}-day forecast for {city}{units?}."], "travel"),
    S("hotel_room_search", "Find hotel rooms in a city for given dates.",
      [P("city", STR, "City", plain_city), P("check_in", STR, "Check-in date, MM-DD-YYYY", date_in("MM-DD-YYYY")),
       P("nights", INT, "Number of nights", num(1, 14)),
       opt(P("guests", INT, "Number of guests", num(2, 6)), " for {v} guests", 1),
       opt(P("max_price", NUM, "Highest nightly price", num(60, 400)), " under {v} per night")],
      ["Find a hotel in {city} from {check_in} for {nights} nights{guests?}{max_price?}.",
       "I need a room in {city}, checking in {check_in}, staying {nights} nights{guests?}{max_price?}."], "travel"),
    S("flight_search_routes", "Search flights between two cities on a date.",
      [P("origin", STR, "Departure city", pick(CITIES)), P("destination", STR, "Arrival city", pick(CITIES)),
       P("date", STR, "Travel date, YYYY-MM-DD", spoken_date),
       opt(E("cabin", "Cabin class", ["economy", "premium", "business", "first"]), " in {v} class", "economy")],
      ["Find flights from {origin} to {destination} on {date}{cabin?}.",
       "Are there flights {origin} -> {destination} on {date}{cabin?}?"], "travel"),
    S("travel_distance_between", "Driving distance between two places.",
      [P("start", STR, "Starting city", plain_city), P("end", STR, "Destination city", plain_city),
       opt(E("unit", "Distance unit", ["km", "miles"]), " in {v}", "km")],
      ["How far is it to drive from {start} to {end}{unit?}?", "Distance from {start} to {end}{unit?}, please."],
      "travel"),
    S("recipe_finder", "Find recipes for a dish with dietary filters.",
      [P("dish", STR, "Dish name", pick(FOODS)),
       opt(P("max_minutes", INT, "Maximum cooking time in minutes", num(10, 90)), " that takes under {v} minutes"),
       opt(P("diet", ARR, "Dietary restrictions", many(pick(["vegan", "gluten-free", "nut-free", "dairy-free"]), 1, 2),
             items={"type": "string"}), " that is {v}")],
      ["Find me a {dish} recipe{max_minutes?}{diet?}.", "I want to cook {dish}{diet?}{max_minutes?}. Any recipe?"],
      "food"),
    S("nutrition_facts_get", "Calories and macronutrients of a food portion.",
      [P("food", STR, "Food name", pick(FOODS)), P("grams", INT, "Portion in grams", num(50, 600))],
      ["How many calories are in {grams} grams of {food}?", "Nutrition facts for {grams} g of {food}."], "food"),
    S("translate_text_to", "Translate text into another language.",
      [P("text", STR, "Text to translate", pick(["Good morning", "Where is the station?", "Thank you very much",
                                                   "See you tomorrow", "How much does this cost?"])),
       P("target_language", STR, "Language to translate into", pick(LANGS)),
       opt(P("source_language", STR, "Language of the text", pick(["English"])), " from {v}")],
      ["Translate '{text}'{source_language?} to {target_language}.",
       "How do you say '{text}' in {target_language}{source_language?}?"], "language"),
    S("word_definition", "Dictionary definition of a word.",
      [P("word", STR, "The word", pick(["serendipity", "ephemeral", "ubiquitous", "laconic", "gregarious"])),
       opt(P("max_definitions", INT, "How many senses to return", num(2, 5)), ", giving up to {v} senses")],
      ["What does '{word}' mean{max_definitions?}?", "Define the word {word}{max_definitions?}."], "language"),
    S("music_playlist_builder", "Build a playlist from genres.",
      [P("genres", ARR, "Music genres", many(pick(GENRES), 1, 3), items={"type": "string"}),
       P("length_minutes", INT, "Playlist length in minutes", num(20, 180))],
      ["Make a {length_minutes}-minute playlist of {genres}.",
       "Build me a playlist with {genres} music lasting {length_minutes} minutes."], "media"),
    S("book_search_catalog", "Search a library catalog.",
      [P("topic", STR, "Subject or keywords", pick(TOPICS)),
       opt(P("published_after", INT, "Earliest publication year", num(1990, 2020)), " published after {v}"),
       opt(P("limit", INT, "Maximum results", num(3, 20)), ", showing {v} results", 10)],
      ["Find books about {topic}{published_after?}{limit?}.", "Search the catalog for {topic}{limit?}{published_after?}."],
      "media"),
    S("calendar_event_create", "Create a calendar event.",
      [P("title", STR, "Event title", pick(["Team sync", "Dentist", "Budget review", "Yoga class", "Lunch with Ana"])),
       P("date", STR, "Date, YYYY-MM-DD", spoken_date), P("start_time", STR, "Start time, HH:MM (24h)",
                                                   lambda r: f"{r.randint(7, 19):02d}:{r.choice(['00', '30'])}"),
       opt(P("attendees", ARR, "Attendee names", many(pick(PEOPLE), 1, 3), items={"type": "string"}), " with {v}")],
      ["Schedule '{title}' on {date} at {start_time}{attendees?}.",
       "Put {title} in my calendar for {date}, starting {start_time}{attendees?}."], "office"),
    S("send_email_message", "Send an email.",
      [P("to", STR, "Recipient address", lambda r: r.choice(PEOPLE).split()[0].lower() + "@example.com"),
       P("subject", STR, "Subject line", pick(["Invoice", "Meeting notes", "Holiday plans", "Project update"])),
       P("body", STR, "Message text", pick(["See you at 3.", "Attached are the notes.", "Running late today."]))],
      ["Email {to} with subject '{subject}' saying '{body}'.",
       "Send a message to {to}: subject {subject}, body: {body}"], "office"),
    S("employee_directory_lookup", "Look up an employee's record.",
      [P("full_name", STR, "Employee full name", pick(PEOPLE)),
       opt(E("field", "Field to return", ["email", "phone", "office", "manager"]), " and return their {v}")],
      ["Look up {full_name} in the directory{field?}.", "Find the employee record for {full_name}{field?}."],
      "office"),
    S("shipment_cost_quote", "Shipping quote for a parcel.",
      [O("parcel", "Parcel dimensions and weight", {"weight_kg": (NUM, "Weight in kg", num(1, 30, 1)),
                                                    "length_cm": (INT, "Length in cm", num(10, 120))}),
       P("destination_country", STR, "Destination country", pick(["Canada", "Japan", "Brazil", "Kenya", "Norway"])),
       opt(E("speed", "Delivery speed", ["standard", "express", "overnight"]), " by {v} delivery", "standard")],
      ["How much to ship a {parcel[weight_kg]} kg parcel, {parcel[length_cm]} cm long, to "
       "{destination_country}{speed?}?",
       "Quote shipping{speed?} to {destination_country} for a package weighing {parcel[weight_kg]} kg "
       "that is {parcel[length_cm]} cm long."], "commerce"),
    S("product_inventory_check", "Stock level of a product in a store.",
      [P("sku", STR, "Product SKU", lambda r: f"SKU-{r.randint(1000, 9999)}"), P("store_city", STR, "Store city",
                                                                                 plain_city)],
      ["Is {sku} in stock at the {store_city} store?", "Check inventory of {sku} in {store_city}."], "commerce"),
    S("order_refund_request", "Request a refund for an order.",
      [P("order_id", STR, "Order number", lambda r: f"A{r.randint(10000, 99999)}"),
       E("reason", "Reason", ["damaged", "late", "wrong_item", "not_needed"]),
       opt(P("partial_amount", NUM, "Amount to refund if partial", num(5, 200, 2)), " for {v} only")],
      ["Refund order {order_id}, reason: {reason}{partial_amount?}.",
       "Please request a refund{partial_amount?} on order {order_id} because it was {reason}."], "commerce"),
    S("sports_match_score", "Final score of a match between two teams on a date.",
      [P("home_team", STR, "Home team", pick(["Rovers", "Falcons", "United", "Tigers", "Comets", "Harbor FC"])),
       P("away_team", STR, "Away team", pick(["Wanderers", "Eagles", "City", "Lions", "Rockets", "Valley SC"])),
       P("match_date", STR, "Date of the match (DD/MM/YYYY)", date_in("DD/MM/YYYY"))],
      ["What was the score of {home_team} vs {away_team} on {match_date}?",
       "Who won when {home_team} hosted {away_team} on {match_date}?"], "sports"),
    S("workout_calorie_burn", "Calories burned by an activity.",
      [E("activity", "Activity", ["running", "cycling", "swimming", "walking", "rowing"]),
       P("minutes", INT, "Duration in minutes", num(10, 120)),
       opt(P("weight_kg", NUM, "Body weight in kg", num(45, 110)), " for someone weighing {v} kg")],
      ["How many calories does {minutes} minutes of {activity} burn{weight_kg?}?",
       "Estimate calories burned {activity} for {minutes} minutes{weight_kg?}."], "health"),
    S("bmi_index_calc", "Body mass index from weight and height.",
      [P("weight_kg", NUM, "Weight in kg", num(40, 130, 1)), P("height_cm", NUM, "Height in cm", num(140, 205))],
      ["What's the BMI of a person who weighs {weight_kg} kg and is {height_cm} cm tall?",
       "Compute BMI: {weight_kg} kg, {height_cm} cm."], "health"),
    S("population_stats_query", "Population of a city in a given year.",
      [P("city", STR, "City name", plain_city), P("year", INT, "Year", num(1950, 2023))],
      ["What was the population of {city} in {year}?", "Population of {city}, year {year}?"], "geo"),
    S("timezone_time_now", "Current local time in a city.",
      [P("city", STR, "City name", plain_city), opt(E("format", "Clock format", ["12h", "24h"]), " in {v} format",
                                                      "24h")],
      ["What time is it in {city}{format?}?", "Tell me the local time in {city}{format?}."], "geo"),
    S("history_event_date", "Date of a historical event by its name.",
      [P("event", STR, "Event name", historical_event)],
      ["When did {event} happen?", "Give me the date of {event}."], "history"),
    S("cinema_showtimes_lookup", "Cinema showtimes for a film in a city.",
      [P("movie", STR, "Film title", pick(["Night Harbor", "The Last Orchard", "Paper Comets", "Iron Meadow"])),
       P("city", STR, "City", plain_city),
       opt(P("date", STR, "Date in MM/DD/YYYY format", date_in("MM/DD/YYYY")), " on {v}")],
      ["When is {movie} playing in {city}{date?}?", "Showtimes for {movie} in {city}{date?}."], "media"),
    S("monthly_sales_summary", "Sales summary of a store for a month.",
      [P("store_id", INT, "Store number", num(1, 300)), E("month", "Month name", MONTHS),
       opt(P("by_category", BOOL, "Break down by category", pick([True])), ", broken down by category", False)],
      ["Summarize sales for store {store_id} in {month}{by_category?}.",
       "How did store number {store_id} do in {month}{by_category?}?"], "commerce"),
    S("restaurant_nearby_search", "Find restaurants serving a cuisine near a US city.",
      [P("location", STR, "City and state, e.g. Springfield, IL", us_city),
       P("cuisine", STR, "Type of food", pick(["Thai", "Mexican", "Italian", "vegan", "sushi", "Ethiopian"])),
       opt(P("min_rating", NUM, "Lowest average rating (1-5)", pick([3.5, 4, 4.5])), " rated at least {v}")],
      ["Find {cuisine} restaurants in {location}{min_rating?}.",
       "I'm in {location} and want {cuisine} food{min_rating?}. Where can I go?"], "food"),
    S("event_tickets_search", "Search tickets for live events in a US city.",
      [P("city", STR, "City and state, e.g. Springfield, IL", us_city),
       E("category", "Kind of event", ["concert", "theater", "comedy", "sports"]),
       opt(P("date", STR, "Date, YYYY-MM-DD", spoken_date), " on {v}")],
      ["Find {category} tickets in {city}{date?}.", "Any {category} events in {city}{date?}?"], "media"),
    S("savings_interest_earned", "Interest earned by a savings deposit with simple interest.",
      [P("deposit", NUM, "Amount deposited", num(100, 50000)),
       P("interest_rate", NUM, "Annual interest rate as a decimal (0.05 for 5%)", percent_decimal),
       P("years", INT, "Number of years", num(1, 20))],
      ["How much interest does {deposit} earn in {years} years at {interest_rate} a year?",
       "I deposit {deposit} at an annual interest rate of {interest_rate} for {years} years. Interest earned?"],
      "finance"),
    S("sale_price_after_discount", "Price of an item after a percentage discount.",
      [P("price", NUM, "Original price", num(5, 2000, 2)),
       P("discount", NUM, "Discount as a fraction of the price, e.g. 0.2 for 20% off", percent_decimal)],
      ["What does an item priced {price} cost after a {discount} discount?",
       "Apply a discount of {discount} to a price of {price}."], "commerce"),
    S("museum_visit_hours", "Opening hours of a museum or landmark.",
      [P("site", STR, "Name of the museum or landmark", landmark),
       opt(E("day", "Day of the week", ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]),
           " on {v}")],
      ["When is {site} open{day?}?", "What are the opening hours of {site}{day?}?"], "travel"),
    S("walking_route_time", "Walking time between two landmarks.",
      [P("start", STR, "Landmark to start from", landmark), P("end", STR, "Landmark to walk to", landmark)],
      ["How long does it take to walk from {start} to {end}?", "Walking time between {start} and {end}?"], "travel"),
    S("dividend_per_share_calc", "Dividend per share from total dividends and shares outstanding.",
      [P("total_dividends", NUM, "Total dividends paid, in dollars", millions(1, 90)),
       P("shares_outstanding", INT, "Number of shares outstanding", millions(1, 50))],
      ["A company paid {total_dividends} dollars in dividends and has {shares_outstanding} shares outstanding. "
       "What is the dividend per share?",
       "Compute the dividend per share: total payout {total_dividends} dollars, {shares_outstanding} shares."],
      "finance"),
]
