"""More of the function-calling expert's own templated functions (not BFCL's), written to teach
what the first set (:mod:`fc_specs`) did not:

* reading a value said in words: counts ("the top five"), compounding ("monthly" -> 12),
  spans ("the next week" -> 7 days), minutes for a parameter in seconds, "from rest" -> 0,
  amounts with thousands separators ("$12,500");
* rates: a plain "rate"/"return" description wants a decimal ("4%" -> 0.04), one that says
  "as a percentage" keeps the number ("4%" -> 4.0);
* splitting "Tokyo, Japan" into a city and a country parameter, and naming the state of a US
  city the question gives alone;
* keeping multi-word names whole ("Grand Lakeside Hotel", "Carter v. Holmes"), the address
  rather than the name for an email recipient;
* optional parameters the question sets in other words than the parameter's name: a unit
  right after a number ("a radius of 4 inches"), a boolean ("in detail", "include the owner"),
  a list of options ("with a patio and parking");
* the same facts in different orders, so that numbers are matched to parameters by meaning.

Same :class:`fc_specs.Spec` format and rules; :data:`SPECS` here are added to the first set's.
"""

from __future__ import annotations

from fleetlm.tune.datagen.fc_specs import ARR, BOOL, INT, NUM, STR, E, P, S, opt
from fleetlm.tune.datagen.fc_values import (CITIES, CITY_COUNTRY, COMPANIES, PEOPLE, US_CITIES, Said, as_percent,
                                            compounding, counted, currency_code, date_in, dollars, linked,
                                            minutes_as_seconds, num, percent_decimal, pick, plain_city,
                                            rest_or_speed, span_days)

_city, _country = linked(CITY_COUNTRY)
_us_city, _us_state = linked([(Said(text, city), state) for city, state, _ in US_CITIES
                              for text in (city, f"{city}, {state}")])


def _recipient(r):
    """A person the question names with their address ("Elena Novak at elena.novak@example.com");
    the call holds the address."""
    name = r.choice(PEOPLE)
    address = name.lower().replace(" ", ".") + "@example.com"
    return Said(r.choice([f"{name} at {address}", f"{name} ({address})"]), address)


HOTELS = ["Grand Lakeside Hotel", "Hotel Aurora", "Palm Court Inn", "Harbor View Suites", "Hotel Belvedere",
          "Royal Crescent Hotel", "Silver Pine Lodge", "Marlowe Grand Hotel", "Casa Solana Resort"]
CASES = ["Carter v. Holmes", "State vs Delgado", "Miller v. Ortega Shipping", "People v. Brandt",
         "Nguyen vs Bright Dental", "Okafor v. City of Lima"]
UNITS = ["inches", "cm", "meters", "feet", "mm"]
AMENITIES = ["patio", "parking", "wifi", "live music"]
RECORD_FIELDS = ["salary", "address", "job history"]
PLACES = ["coffee shop", "bookstore", "park", "bakery", "museum", "gym", "pizza place"]

SPECS = [
    S("sphere_surface_area", "Surface area of a sphere from its radius.",
      [P("radius", NUM, "Radius of the sphere", num(1, 50, 1)),
       opt(P("unit", STR, "Unit of the radius", pick(UNITS)), " {v}", "cm")],
      ["What is the surface area of a sphere with a radius of {radius}{unit?}?",
       "A ball has radius {radius}{unit?}. Compute its surface area."], "math"),
    S("box_volume_calc", "Volume of a rectangular box.",
      [P("length", NUM, "Length", num(1, 80)), P("width", NUM, "Width", num(1, 80)),
       P("height", NUM, "Height", num(1, 80)),
       opt(P("unit", STR, "Unit of the sides", pick(UNITS)), " {v}", "cm")],
      ["Find the volume of a box {length} by {width} by {height}{unit?}.",
       "A box is {height}{unit?} tall, {width} wide and {length} long. What is its volume?"], "math"),
    S("speed_after_acceleration", "Final speed of an object under constant acceleration.",
      [P("initial_speed", NUM, "Speed at the start in m/s", rest_or_speed),
       P("acceleration", NUM, "Acceleration in m/s^2", num(1, 12, 1)),
       P("duration", NUM, "Time in seconds", num(2, 60))],
      ["An object starting from {initial_speed} accelerates at {acceleration} m/s^2 for {duration} seconds. "
       "What is its final speed?",
       "Find the final speed after accelerating at {acceleration} m/s^2 for {duration} s, starting from "
       "{initial_speed}.",
       "For {duration} seconds a cart speeds up at {acceleration} m/s^2 from {initial_speed}. How fast is it then?"],
      "physics"),
    S("clock_time_in_city", "Current local time in a city.",
      [P("city", STR, "Name of the city", _city), P("country", STR, "Country of the city", _country),
       opt(E("clock", "12 or 24 hour clock", ["12h", "24h"]), " in {v} format", "24h")],
      ["What time is it now in {city}, {country}{clock?}?", "Tell me the current time in {city} ({country}){clock?}.",
       "I'm calling someone in {city}, {country}. What's the time there{clock?}?"], "geo"),
    S("air_pollution_reading", "Air quality index of a city.",
      [P("city", STR, "The city", _city), P("country", STR, "The country", _country),
       opt(P("date", STR, "Date as MM-DD-YYYY", date_in("MM-DD-YYYY")), " on {v}")],
      ["What's the air quality in {city}, {country}{date?}?",
       "Check the pollution index of {city} in {country}{date?}."],
      "geo"),
    S("crime_stats_by_city", "Reported crime rate of a US city.",
      [P("city", STR, "Name of the city", _us_city),
       P("state", STR, "Full name of the state the city is in", _us_state),
       opt(P("year", INT, "Year of the data", num(2005, 2023)), " in {v}"),
       opt(E("crime_type", "Kind of crime", ["violent", "property", "all"]), " for {v} crime", "all")],
      ["What is the crime rate in {city}{crime_type?}{year?}?",
       "Give me crime statistics{year?} for {city}{crime_type?}."],
      "geo"),
    S("bond_price_estimate", "Present value of a bond's coupons and face value.",
      [P("coupon", NUM, "Yearly coupon payment in dollars", num(20, 200)),
       P("years", INT, "Years to maturity", num(2, 30)),
       P("discount_rate", NUM, "The discount rate", percent_decimal),
       opt(P("face_value", NUM, "Face value in dollars", pick([500, 2000, 5000])), " and a face value of ${v}", 1000)],
      ["Price a bond paying ${coupon} a year for {years} years at a discount rate of {discount_rate}{face_value?}.",
       "What is a bond worth with a discount rate of {discount_rate}, coupons of ${coupon} yearly{face_value?}, "
       "maturing in {years} years?"], "finance"),
    S("investment_projection", "Projected value of an investment after some years.",
      [P("amount", NUM, "Amount invested", dollars(1000, 100000)), P("annual_return", NUM, "The expected annual return",
                                                                     percent_decimal),
       P("years", INT, "Holding period in years", num(1, 30))],
      ["If I invest {amount} with an expected annual return of {annual_return} for {years} years, "
       "what will it be worth?",
       "Project the value of {amount} over {years} years at {annual_return} annual return."], "finance"),
    S("deposit_growth_percent", "Balance of a savings deposit after some years.",
      [P("deposit", NUM, "Amount deposited", dollars(500, 50000)),
       P("interest", NUM, "Annual interest as a percentage", as_percent), P("years", INT, "Years", num(1, 25))],
      ["How much will a deposit of {deposit} grow to at {interest} interest over {years} years?",
       "My savings of {deposit} earn {interest} a year. What's the balance after {years} years?"], "finance"),
    S("compound_loan_balance", "Balance owed on a loan with compound interest.",
      [P("principal", NUM, "Amount borrowed", dollars(1000, 200000)), P("rate", NUM, "The annual interest rate",
                                                                         percent_decimal),
       P("years", INT, "Years", num(1, 30)),
       opt(P("periods_per_year", INT, "Compounding periods per year", compounding), ", compounded {v}", 1)],
      ["What will I owe on a {principal} loan at {rate} after {years} years{periods_per_year?}?",
       "Compute the balance of a loan of {principal} at an annual rate of {rate}{periods_per_year?} "
       "after {years} years."],
      "finance"),
    S("top_places_search", "Best-rated places of a kind in a city.",
      [E("kind", "Kind of place", PLACES), P("city", STR, "City", plain_city),
       P("count", INT, "How many places to return", counted(2, 10))],
      ["Find the top {count} {kind}s in {city}.", "What are the {count} best {kind}s in {city}?",
       "List {count} highly rated {kind}s in {city}."], "travel"),
    S("hotel_reservation_make", "Reserve a room at a named hotel.",
      [P("hotel_name", STR, "Full name of the hotel", pick(HOTELS)), P("city", STR, "City of the hotel", pick(CITIES)),
       P("check_in", STR, "Check-in date, YYYY-MM-DD", date_in("YYYY-MM-DD")),
       P("nights", INT, "Number of nights", counted(1, 9)),
       opt(E("room", "Room type", ["single", "double", "suite", "deluxe"]), " in a {v} room", "double")],
      ["Book the {hotel_name} in {city} for {nights} nights from {check_in}{room?}.",
       "Reserve {nights} nights{room?} at {hotel_name}, {city}, checking in {check_in}."], "travel"),
    S("legal_case_summary", "Summary of a court case by its name.",
      [P("case_name", STR, "Name of the case", pick(CASES)),
       opt(P("include_filings", BOOL, "Include the list of filed documents", pick([True])),
           ", including the filed documents", False)],
      ["Summarize the case '{case_name}'{include_filings?}.", "What happened in {case_name}{include_filings?}?"],
      "law"),
    S("company_overview_fetch", "Overview of a company.",
      [P("company", STR, "Company name", pick(COMPANIES)),
       opt(P("detailed", BOOL, "Return the detailed overview", pick([True])), " in detail", False)],
      ["Tell me about {company}{detailed?}.", "Give me an overview of {company}{detailed?}."], "finance"),
    S("parcel_record_lookup", "Land registry record of a property.",
      [P("address", STR, "Street address", lambda r: f"{r.randint(1, 999)} {r.choice(['Oak', 'Main', 'Hill'])} street"),
       P("county", STR, "County", pick(["Marin", "Travis", "King", "Cook", "Dade"])),
       opt(P("include_owner", BOOL, "Include the owner's details", pick([True])), " and include the owner's details",
           False)],
      ["Get the property record for {address} in {county} county{include_owner?}.",
       "Look up the land record of {address}, {county} County{include_owner?}."], "law"),
    S("venue_search_amenities", "Find cafes or restaurants with given amenities.",
      [P("city", STR, "City", plain_city),
       P("cuisine", STR, "Kind of food", pick(["Thai", "Italian", "vegan", "Greek"])),
       opt(P("amenities", ARR, "Required amenities", lambda r: r.sample(AMENITIES, r.randint(1, 2)),
             items={"type": "string", "enum": AMENITIES}), " with {v}")],
      ["Find a {cuisine} restaurant in {city}{amenities?}.", "Any {cuisine} places{amenities?} in {city}?"], "food"),
    S("staff_record_fields", "Fields of an employee's record.",
      [P("employee_id", INT, "Employee number", num(100, 9999)),
       opt(P("fields", ARR, "Which fields to return", lambda r: r.sample(RECORD_FIELDS, r.randint(1, 2)),
             items={"type": "string", "enum": RECORD_FIELDS}), " and show their {v}")],
      ["Open the record of employee {employee_id}{fields?}.", "Fetch employee #{employee_id}{fields?}."], "office"),
    S("film_listings_upcoming", "Films showing in a city over the coming days.",
      [P("city", STR, "City", plain_city),
       opt(P("days_ahead", INT, "How many days ahead to look", span_days), " over {v}", 1)],
      ["What films are showing in {city}{days_ahead?}?", "List movie screenings in {city}{days_ahead?}."], "media"),
    S("audio_mix_generate", "Generate a music track.",
      [P("genre", STR, "Genre", pick(["jazz", "techno", "lo-fi", "ambient"])),
       P("length_seconds", INT, "Length of the track in seconds", minutes_as_seconds)],
      ["Make a {genre} track lasting {length_seconds}.", "Generate {length_seconds} of {genre} music."], "media"),
    S("email_send_copy", "Send an email, optionally with a copy to someone.",
      [P("to", STR, "Email address of the recipient", _recipient),
       P("subject", STR, "Subject", pick(["Quarterly report", "Lunch", "Contract draft", "Flight details"])),
       opt(P("cc", STR, "Address to copy", pick(["team@example.com", "boss@example.com"])), ", copying {v}")],
      ["Email {to} about '{subject}'{cc?}.", "Send {to} a mail titled '{subject}'{cc?}."], "office"),
    S("currency_rate_today", "Today's exchange rate between two currencies.",
      [P("from_code", STR, "ISO code of the currency to convert from", currency_code),
       P("to_code", STR, "ISO code of the currency to convert to", currency_code),
       P("amount", NUM, "Amount in the from currency", num(10, 5000))],
      ["How many {to_code} do I get for {amount} {from_code}?", "I want to change {amount} {from_code} into {to_code}.",
       "What is {amount} {from_code} worth in {to_code}?"], "finance"),
]
