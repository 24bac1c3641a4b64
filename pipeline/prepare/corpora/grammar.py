"""A grammar of spoken voice-assistant commands, split so that test text is never trained on.

Each intent has templates such as ``"Set a timer for {duration}."``; each ``{slot}`` takes a
value from ``SLOTS`` (``{number2}`` is a second value from the ``number`` list). A sentence
never uses a value twice or a value inside another ('How many feet is thirty feet') and has
``MIN_WORDS`` to ``MAX_WORDS`` words. Everything is written as it is spoken (numbers and times
in words, no digits or symbols) because TTS engines read the text aloud and the transcript
must match the audio.

Templates (within each intent) and slot values (within each list) are partitioned about
70/10/20 into train / dev / test by the rank of a hashlib digest, so dev and test sentences use
templates and values that train never sees. 'train' and 'heldout' share the train templates and
values and are separated sentence by sentence: one sentence in ``HELDOUT_EVERY`` (by digest of
its text) is held out. A template adds at most ``MAX_COMBOS_PER_TEMPLATE`` slot combinations,
spread evenly over all of its combinations, which keeps the train pool small enough to list in
about half a second while leaving it far larger than any sample drawn from it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Iterator, Sequence
from functools import cache

import numpy as np

SPLITS = ("train", "heldout", "dev", "test")
HELDOUT_EVERY = 20
MAX_COMBOS_PER_TEMPLATE = 1500
MIN_WORDS, MAX_WORDS = 3, 16  # longer combinations (long values together) are left out

# The tables below are laid out by hand, dense, so the formatter leaves them alone.
# fmt: off
# number words, for the lists of times, durations, numbers and percentages built below
_ONES = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = (
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
)
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_1_TO_99 = _ONES + _TEENS + tuple(f"{t} {o}" if o else t for t in _TENS for o in ("", *_ONES))
_HOURS = _ONES + ("ten", "eleven", "twelve")
_ORDINALS = (
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
    "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
    "seventeenth", "eighteenth", "nineteenth", "twentieth", "twenty first", "twenty second",
    "twenty third", "twenty fourth", "twenty fifth", "twenty sixth", "twenty seventh",
    "twenty eighth",
)
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
_AMOUNTS = (
    "five", "ten", "fifteen", "twenty", "twenty five", "thirty", "forty", "fifty", "sixty",
    "seventy five", "eighty", "one hundred", "two hundred", "five hundred", "one thousand",
)

SLOTS: dict[str, tuple[str, ...]] = {
    "time": (
        *(
            f"{h} {m}"
            for h in _HOURS
            for m in ("o'clock", "oh five", "ten", "fifteen", "twenty", "thirty", "forty",
                      "forty five", "fifty")
        ),
        *(f"half past {h}" for h in _HOURS),
        *(f"a quarter past {h}" for h in _HOURS),
        *(f"a quarter to {h}" for h in _HOURS),
        "noon", "midnight",
    ),
    "duration": (
        *(f"{n} minutes" for n in _1_TO_99[1:59]),
        *(f"{n} seconds" for n in ("ten", "fifteen", "twenty", "thirty", "forty", "forty five",
                                   "fifty", "ninety")),
        *(f"{n} hours" for n in _1_TO_99[1:12]),
        "one minute", "a minute and a half", "half an hour", "a quarter of an hour", "an hour",
        "an hour and a half", "an hour and ten minutes",
    ),
    "number": (
        *_1_TO_99[2:],
        "one hundred", "one hundred and twenty", "two hundred", "two hundred and fifty",
        "three hundred and sixty five", "five hundred", "one thousand", "ten thousand",
    ),
    "percent": (*(f"{n} percent" for n in _1_TO_99), "one hundred percent"),
    "date": tuple(
        f"on the {ordinal} of {_MONTHS[(i + 3 * k) % 12]}"
        for i, ordinal in enumerate(_ORDINALS)
        for k in range(4)
    ),
    "money": tuple(
        f"{amount} {currency}"
        for amount in _AMOUNTS
        for currency in ("dollars", "pounds", "euros", "rupees", "naira")
    ),
    "day": (
        "today", "tomorrow", "the day after tomorrow", "on Monday", "on Tuesday",
        "on Wednesday", "on Thursday", "on Friday", "on Saturday", "on Sunday", "next Monday",
        "next Tuesday", "next Wednesday", "next Thursday", "next Friday", "next Saturday",
        "next Sunday", "this Monday", "this Tuesday", "this Wednesday", "this Thursday",
        "this Friday", "this Saturday", "this Sunday", "this weekend", "next weekend",
        "at the weekend", "next week", "later this week", "in two days", "in three days",
        "in a week", "on Christmas Eve", "on New Year's Day", "on Valentine's Day",
    ),
    "repeat": (
        "every day", "every weekday", "on weekdays", "on weekends", "every Monday",
        "every Tuesday", "every Wednesday", "every Thursday", "every Friday", "every Saturday",
        "every Sunday", "every other day",
    ),
    "timer_label": (
        "pasta", "boiled eggs", "rice", "pizza", "cookies", "tea", "laundry", "roast chicken",
        "jacket potatoes", "soup", "cake", "muffins", "lasagne", "homework", "workout", "nap",
        "meditation", "parking meter", "steak", "salmon", "vegetables", "pie", "brownies",
        "noodles", "jollof rice", "chips", "bread rolls", "porridge", "pancakes",
        "fish fingers", "sausage rolls", "banana bread", "curry", "stew", "flapjacks",
    ),
    "room": (
        "kitchen", "living room", "bedroom", "master bedroom", "bathroom", "guest bathroom",
        "hallway", "dining room", "office", "study", "garage", "basement", "attic", "nursery",
        "kids' room", "guest room", "lounge", "garden", "pantry", "laundry room", "den",
        "playroom", "family room", "front yard", "back yard", "utility room",
        "conservatory", "loft", "spare room", "downstairs toilet", "games room", "home gym",
        "music room", "sunroom", "cloakroom",
    ),
    "color": (
        "red", "green", "blue", "warm white", "cool white", "daylight", "soft white", "purple",
        "pink", "orange", "yellow", "teal", "turquoise", "lavender", "amber", "magenta", "cyan",
        "gold", "lime green", "sky blue", "navy blue", "coral", "violet", "peach", "candlelight",
        "warm yellow", "ice blue", "forest green", "rose", "crimson", "mint", "ruby red",
        "sunset orange", "ocean blue", "emerald",
    ),
    "temperature": (
        *(f"{n} degrees" for n in _1_TO_99[9:32]),
        *(f"{n} and a half degrees" for n in _1_TO_99[15:27]),
    ),
    "temp_delta": (
        "one degree", "two degrees", "three degrees", "four degrees", "five degrees",
        "half a degree", "a degree and a half", "a couple of degrees", "a few degrees",
        "two and a half degrees",
    ),
    "hvac_mode": (
        "heating", "cooling", "eco", "automatic", "away", "vacation", "fan only", "dry",
        "boost", "frost protection", "night",
    ),
    "city": (
        "London", "Paris", "New York", "Tokyo", "Lagos", "Nairobi", "Mumbai", "Delhi",
        "Sydney", "Toronto", "Berlin", "Madrid", "Rome", "Dublin", "Edinburgh", "Manchester",
        "Glasgow", "Cardiff", "Belfast", "Accra", "Cairo", "Johannesburg", "Cape Town", "Dubai",
        "Singapore", "Hong Kong", "Seoul", "Beijing", "Shanghai", "Bangkok", "Jakarta",
        "Manila", "Karachi", "Lahore", "Dhaka", "Chennai", "Bangalore", "Kolkata",
        "Los Angeles", "Chicago", "Houston", "Miami", "Boston", "Seattle", "San Francisco",
        "Vancouver", "Montreal", "Mexico City", "Buenos Aires", "Lisbon", "Amsterdam",
        "Stockholm", "Vienna", "Athens", "Kingston", "Osaka", "Kyoto", "Abuja", "Kano",
        "Ibadan", "Kampala", "Kigali", "Addis Ababa", "Dar es Salaam", "Casablanca", "Dakar",
        "Harare", "Durban", "Riyadh", "Doha", "Abu Dhabi", "Islamabad", "Hyderabad", "Pune",
        "Jaipur", "Colombo", "Kathmandu", "Kuala Lumpur", "Hanoi", "Taipei", "Perth",
        "Brisbane", "Auckland", "Wellington", "Denver", "Atlanta", "Dallas", "Philadelphia",
        "New Orleans", "Ottawa", "Havana", "Lima", "Bogota", "Santiago", "Rio de Janeiro",
        "Milan", "Barcelona", "Munich", "Zurich", "Brussels", "Copenhagen", "Prague",
        "Budapest", "Istanbul", "Leeds", "Birmingham", "Bristol", "Cork", "Swansea",
    ),
    "song": (
        "Bohemian Rhapsody", "Hey Jude", "Imagine", "Yesterday", "Halo", "Shape of You",
        "Rolling in the Deep", "Someone Like You", "Billie Jean", "Thriller", "Purple Rain",
        "Wonderwall", "Hotel California", "Hallelujah", "Dancing Queen", "Let It Be",
        "Sweet Caroline", "Respect", "Superstition", "Uptown Funk", "Bad Guy",
        "Blinding Lights", "Levitating", "Shallow", "Despacito", "Africa", "Jolene", "Wannabe",
        "Back to Black", "Redemption Song", "One Love", "Lose Yourself", "Clocks",
        "Don't Stop Me Now", "Three Little Birds", "Waterloo", "Valerie", "Umbrella",
        "Crazy in Love", "Viva la Vida", "Fix You", "Thinking Out Loud", "Firework",
        "Take On Me", "Space Oddity", "Paint It Black", "Good Vibrations", "Stand by Me",
        "What a Wonderful World", "Feeling Good", "Fly Me to the Moon", "My Way",
        "Ring of Fire", "Lean on Me", "Stayin' Alive", "Heroes", "Seven Nation Army",
        "Hips Don't Lie", "Essence", "Calm Down",
    ),
    "artist": (
        "Queen", "The Beatles", "Adele", "Beyonce", "Taylor Swift", "Ed Sheeran", "Bob Marley",
        "Michael Jackson", "Prince", "Oasis", "Coldplay", "Rihanna", "Drake", "Burna Boy",
        "Wizkid", "Tems", "Shakira", "Bad Bunny", "Billie Eilish", "Dua Lipa", "Harry Styles",
        "Stevie Wonder", "Aretha Franklin", "Whitney Houston", "Elton John", "David Bowie",
        "Fleetwood Mac", "Amy Winehouse", "Eminem", "Kendrick Lamar", "Arctic Monkeys",
        "Radiohead", "The Weeknd", "Bruno Mars", "Lady Gaga", "Madonna", "Dolly Parton",
        "Johnny Cash", "Nina Simone", "Miles Davis", "Ella Fitzgerald", "Frank Sinatra",
        "Arijit Singh", "Angelique Kidjo", "Fela Kuti", "Celine Dion", "Kylie Minogue",
        "Lata Mangeshkar", "Sade", "Davido", "Asake", "Rema", "Ayra Starr", "Olivia Rodrigo",
        "Lizzo", "Sam Smith", "Lewis Capaldi", "Florence and the Machine", "The Rolling Stones",
        "Bob Dylan",
    ),
    "genre": (
        "jazz", "classical", "rock", "pop", "hip hop", "reggae", "afrobeats", "country",
        "blues", "soul", "funk", "disco", "heavy metal", "punk", "folk", "indie", "electronic",
        "house", "techno", "gospel", "bluegrass", "lo fi", "bossa nova", "salsa", "flamenco",
        "ambient", "drum and bass", "dancehall", "highlife", "amapiano", "bhangra",
        "Bollywood", "grime", "ska", "opera",
    ),
    "contact": (
        "Mum", "Dad", "Grandma", "Grandpa", "Uncle Tony", "Auntie Grace", "Doctor Patel",
        "Amara", "Ben", "Chloe", "Daniel", "Emeka", "Fatima", "George", "Hannah", "Ibrahim",
        "Jasmine", "Kwame", "Laura", "Mohammed", "Nadia", "Oliver", "Priya", "Rajesh", "Sofia",
        "Thomas", "Uche", "William", "Yasmin", "Zainab", "Aisha", "Carlos", "Deepak", "Elena",
        "Fiona", "Gareth", "Hiroshi", "Isabel", "Jamal", "Kate", "Liam", "Mei", "Niamh",
        "Oscar", "Rosa", "Sanjay", "Tariq", "Aoife", "Chidi", "Dmitri", "Ngozi", "Siobhan",
        "Kofi", "Lucy", "Marcus", "Abdul", "Bisi", "Callum", "Dolores", "Efua", "Femi",
        "Gemma", "Hamza", "Ifeoma", "Jack", "Kemi", "Leila", "Matteo", "Nia", "Olu", "Paulo",
        "Quentin", "Rhys", "Tunde", "Usha", "Vikram", "Wendy", "Xin", "Yusuf", "Zoe", "Alice",
        "Brendan", "Chen", "Darius", "Esther", "Farah", "Gita", "Hugo", "Imogen", "Jorge",
        "Kiran", "Lakshmi", "Nneka", "Owen", "Pedro", "Ruth", "Sean", "Tomasz", "Ama",
        "Gloria",
    ),
    "phone_type": (
        "mobile", "cell phone", "work phone", "home phone", "landline", "office line",
        "personal number", "business number", "work mobile", "main number", "second number",
        "house phone",
    ),
    "message": (
        "I'm running late", "I'm on my way", "I'll be home soon", "dinner is ready",
        "the meeting has moved", "I'm stuck in traffic", "I'll call you back later",
        "I've landed safely", "the door is unlocked", "I'm outside", "the kids are asleep",
        "I'll pick you up at the station", "we need more milk", "the package has arrived",
        "I left my keys at home", "I'll be there in twenty minutes", "I'm leaving work now",
        "I'm at the supermarket", "the train is delayed", "I miss you", "we're almost there",
        "the car is fixed", "lunch is on me", "I'm free this afternoon",
        "the cake is in the fridge", "I forgot my wallet", "the dog needs a walk",
        "I'll be a bit late", "I can't make it tonight", "I got the job",
        "the party is cancelled", "I'm feeling much better", "school finishes early today",
        "the plumber is coming at noon", "I've sent the photos", "the tickets are booked",
        "I'll bring dessert", "it's raining here", "the heating is broken",
        "everything is fine", "I'm waiting by the entrance", "the shop was closed",
        "I found your phone", "the taxi is here", "we won the match", "I'm in a meeting",
        "the baby is asleep", "I'll cook tonight", "the flight is on time",
        "I've parked outside", "the game starts soon", "I'm at the gym", "I love you",
        "the printer is fixed", "I'll need a lift later", "the keys are under the mat",
        "I've paid the bill", "the film starts at eight", "we're out of bread",
        "I'm just finishing up",
    ),
    "place": (
        "the airport", "the train station", "the bus station", "the city centre",
        "the hospital", "the university", "the stadium", "the zoo", "the cinema",
        "the library", "the shopping centre", "the town hall", "the harbour",
        "the ferry terminal", "the convention centre", "the museum", "the art gallery",
        "the beach", "the market", "the old town", "the cathedral", "the botanical gardens",
        "the science park", "the business park", "the park and ride", "the marina",
        "the fire station", "the courthouse", "the embassy", "the opera house", "the theatre",
        "the concert hall", "the aquarium", "the castle", "the ice rink", "the bowling alley",
        "the golf course", "the waterfront", "the leisure centre", "the swimming pool",
        "the main square", "the night market", "the racecourse", "the ski resort",
        "the campsite",
    ),
    "poi": (
        "coffee shop", "pharmacy", "petrol station", "supermarket", "cash machine", "car park",
        "bakery", "pizza place", "bookshop", "post office", "charging station", "vet",
        "dentist", "police station", "public toilet", "barber", "hair salon", "laundrette",
        "hardware store", "Chinese restaurant", "sushi bar", "taco stand", "bike shop",
        "phone shop", "bank", "florist", "pub", "cafe", "garden centre", "mechanic", "car wash",
        "taxi rank", "bus stop", "food court", "gym", "Thai restaurant", "burger bar",
        "fish and chip shop", "newsagent", "shoe repair shop", "key cutter", "tyre shop",
        "pet shop", "toy shop", "juice bar",
    ),
    "travel_mode": (
        "walking", "cycling", "driving", "bus", "train", "fastest", "shortest", "scenic",
        "quietest", "cheapest",
    ),
    "avoid": (
        "tolls", "motorways", "highways", "ferries", "traffic", "the town centre",
        "dirt roads", "busy roads", "the bridge", "roadworks", "the ring road",
    ),
    "item": (
        "milk", "eggs", "sliced bread", "butter", "cheddar cheese", "bananas", "apples",
        "oranges", "tomatoes", "potatoes", "onions", "garlic", "basmati rice", "spaghetti",
        "olive oil", "sugar", "flour", "coffee beans", "tea bags", "orange juice", "yoghurt",
        "chicken breasts", "minced beef", "salmon fillets", "frozen peas", "carrots",
        "broccoli", "spinach", "lettuce", "cucumbers", "peppers", "mushrooms", "strawberries",
        "blueberries", "grapes", "lemons", "avocados", "cereal", "oats", "honey",
        "peanut butter", "jam", "toilet paper", "paper towels", "washing up liquid",
        "laundry detergent", "dishwasher tablets", "shampoo", "toothpaste", "bin bags",
        "batteries", "light bulbs", "cat food", "plantains", "chickpeas", "sparkling water",
        "crisps", "biscuits", "ice cream", "yams", "lentils", "tortillas", "dog food",
        "nappies", "cream cheese", "bagels", "croissants", "sausages", "bacon", "tuna",
        "prawns", "tofu", "soy sauce", "ketchup", "mayonnaise", "mustard", "vinegar",
        "black pepper", "cinnamon", "ginger", "sweet potatoes", "courgettes", "cabbage",
        "pineapple", "mangoes", "watermelon", "raspberries", "pears", "coconut milk",
        "almond milk", "dark chocolate", "popcorn", "granola", "hummus", "baked beans",
    ),
    "list_name": (
        "grocery", "Costco", "hardware", "party", "camping", "holiday", "Christmas",
        "barbecue", "picnic", "baking", "chemist", "back to school", "weekly", "Sainsbury's",
        "market", "DIY", "wedding", "Diwali", "Eid", "Thanksgiving", "gardening",
        "holiday packing", "pet supplies", "Aldi", "office supplies",
    ),
    "task": (
        "call the plumber", "pay the electricity bill", "book a dentist appointment",
        "water the plants", "take out the bins", "pick up the dry cleaning",
        "buy a birthday card", "renew my passport", "walk the dog", "feed the cat",
        "charge my phone", "send the invoice", "email my manager", "clean the fridge",
        "change the bed sheets", "return the library books", "defrost the freezer",
        "check the tyre pressure", "take my vitamins", "call the bank",
        "book a table for dinner", "pack my gym bag", "order more printer ink",
        "cancel the gym membership", "fill up the car", "mow the lawn", "do the laundry",
        "vacuum the stairs", "back up my laptop", "pay the rent", "collect the kids from school",
        "buy flowers for Mum", "finish the report", "submit my tax return",
        "schedule an oil change", "reply to the landlord", "clean the windows", "wash the car",
        "iron my shirts", "pick up my prescription", "make a vet appointment",
        "book train tickets", "update my CV", "study for the exam", "practise the piano",
        "call Grandma", "check the post", "lock the back door", "send a thank you note",
        "bring in the washing", "set the table", "buy stamps", "top up my travel card",
        "sign the school form", "put the chicken in the oven", "book a flight",
        "hang the pictures", "fix the leaking tap", "call the insurance company",
        "renew the car insurance", "buy a new charger", "print the boarding passes",
        "pay the water bill", "clean the oven", "sort the recycling", "wrap the presents",
        "check my emails", "call the vet", "drop off the parcel", "make a packed lunch",
        "defrost the chicken", "soak the beans", "take my medicine", "go for a run",
        "phone the school", "read to the kids", "clean the bathroom", "tidy the garage",
        "return the rental car", "feed the fish",
    ),
    "event": (
        "dentist appointment", "team meeting", "doctor's appointment", "haircut",
        "job interview", "parent teacher meeting", "yoga class", "lunch meeting",
        "piano lesson", "football practice", "book club meeting", "coffee catch up",
        "project review", "budget meeting", "performance review", "gym session",
        "swimming lesson", "driving lesson", "dinner reservation", "date night",
        "birthday dinner", "baby shower", "wedding rehearsal", "conference call",
        "sales pitch", "team lunch", "study group", "choir practice", "dance class",
        "tennis match", "school play", "hospital appointment", "physio session",
        "board meeting", "quarterly review", "training session", "client call",
        "family dinner", "movie night", "church service", "book signing", "charity run",
        "cooking class", "language class", "design review", "parents' evening",
        "team offsite", "coffee morning", "car service", "house viewing", "pottery class",
        "sprint planning", "karaoke night", "quiz night", "wine tasting", "night out",
        "regular checkup", "guitar lesson", "maths tutoring session", "team standup",
    ),
    "distance": tuple(
        f"{amount} {unit}"
        for amount in ("two", "three", "five", "seven", "ten", "twelve", "fifteen", "twenty",
                       "thirty", "fifty", "one hundred", "two hundred")
        for unit in ("kilometres", "miles", "metres", "feet", "inches", "yards")
    ),
    "distance_unit": (
        "miles", "kilometres", "metres", "feet", "inches", "centimetres", "yards",
        "millimetres", "nautical miles", "steps",
    ),
    "weight": (
        "two pounds", "five kilograms", "a hundred grams", "half a kilo", "twelve ounces",
        "ten stone", "three hundred grams", "a pound and a half", "seventy kilograms",
        "eight ounces", "two hundred and fifty grams", "one kilogram", "sixteen ounces",
        "eleven stone", "a tonne", "four pounds", "fifty grams", "nine kilograms",
        "a quarter of a pound", "six hundred grams", "three kilograms", "twenty ounces",
        "fourteen stone", "seven pounds", "five hundred grams", "two tonnes",
        "eighty kilograms", "forty grams", "six ounces", "nine stone",
    ),
    "weight_unit": (
        "grams", "kilograms", "ounces", "pounds", "stone", "milligrams", "tonnes", "kilos",
        "carats", "micrograms",
    ),
    "volume": (
        "two cups", "a litre", "half a litre", "three tablespoons", "a teaspoon",
        "five hundred millilitres", "a pint", "two pints", "a gallon", "four fluid ounces",
        "a quarter cup", "one and a half cups", "two hundred millilitres", "ten gallons",
        "a tablespoon", "three teaspoons", "a cup", "six litres", "a quart",
        "two and a half litres", "three cups", "four pints", "two litres", "five gallons",
        "a hundred millilitres", "two teaspoons", "half a cup", "three quarts",
        "eight fluid ounces", "four tablespoons",
    ),
    "volume_unit": (
        "millilitres", "litres", "cups", "pints", "gallons", "fluid ounces", "tablespoons",
        "teaspoons", "quarts", "centilitres",
    ),
    "currency": (
        "Canadian dollars", "Australian dollars", "Swiss francs", "Mexican pesos",
        "South African rand", "Chinese yuan", "Ghanaian cedis", "Brazilian reals",
        "Japanese yen", "Indian rupees", "British pounds", "US dollars", "Kenyan shillings",
        "Nigerian naira", "Turkish lira",
    ),
    "person": (
        "Marie Curie", "Albert Einstein", "Nelson Mandela", "William Shakespeare",
        "Isaac Newton", "Ada Lovelace", "Charles Darwin", "Leonardo da Vinci", "Frida Kahlo",
        "Mahatma Gandhi", "Martin Luther King", "Cleopatra", "Napoleon", "Queen Victoria",
        "Abraham Lincoln", "Winston Churchill", "Amelia Earhart", "Rosa Parks",
        "Wangari Maathai", "Chinua Achebe", "Jane Austen", "Charles Dickens", "Mozart",
        "Beethoven", "Pablo Picasso", "Vincent van Gogh", "Galileo", "Nikola Tesla",
        "Thomas Edison", "Alan Turing", "Florence Nightingale", "Mary Seacole",
        "Harriet Tubman", "Julius Caesar", "Confucius", "Genghis Khan", "Rabindranath Tagore",
        "Srinivasa Ramanujan", "Katherine Johnson", "Neil Armstrong", "Yuri Gagarin",
        "Muhammad Ali", "Maya Angelou", "Stephen Hawking", "Rosalind Franklin", "Michelangelo",
        "Aristotle", "Plato", "Socrates", "Catherine the Great", "Mansa Musa",
        "Haile Selassie", "Simon Bolivar", "Sojourner Truth", "Emmeline Pankhurst",
        "Jesse Owens", "Charlie Chaplin", "Walt Disney", "Sigmund Freud",
        "Johann Sebastian Bach",
    ),
    "country": (
        "France", "Japan", "Nigeria", "Kenya", "India", "Brazil", "Canada", "Australia",
        "Germany", "Italy", "Spain", "Portugal", "Mexico", "Argentina", "Chile", "Peru",
        "Egypt", "Ghana", "Ethiopia", "South Africa", "Morocco", "China", "South Korea",
        "Vietnam", "Thailand", "Indonesia", "the Philippines", "Pakistan", "Bangladesh",
        "Sri Lanka", "Nepal", "Turkey", "Greece", "Sweden", "Norway", "Finland", "Iceland",
        "Ireland", "Scotland", "Poland", "Ukraine", "New Zealand", "Jamaica", "Colombia",
        "Switzerland", "Uganda", "Tanzania", "Rwanda", "Senegal", "Cameroon", "Zimbabwe",
        "Zambia", "Algeria", "Tunisia", "Saudi Arabia", "Qatar", "Iran", "Israel", "Jordan",
        "Lebanon", "Malaysia", "Cambodia", "Mongolia", "Russia", "Denmark", "Hungary",
        "Romania", "Belgium", "the Netherlands", "Austria",
    ),
    "animal": (
        "elephants", "giraffes", "dolphins", "penguins", "owls", "octopuses", "cheetahs",
        "tortoises", "honey bees", "koalas", "kangaroos", "sharks", "whales", "wolves", "bats",
        "parrots", "flamingos", "hedgehogs", "sloths", "camels", "zebras", "gorillas", "lions",
        "tigers", "polar bears", "crocodiles", "frogs", "butterflies", "jellyfish", "ants",
        "snakes", "horses", "rabbits", "hippos", "hummingbirds", "peacocks", "squirrels",
        "otters", "beavers", "badgers", "foxes", "pandas", "lemurs", "orangutans", "ostriches",
    ),
    "landmark": (
        "the Eiffel Tower", "Mount Everest", "the Great Wall of China", "the Statue of Liberty",
        "Big Ben", "the Burj Khalifa", "Mount Kilimanjaro", "the Empire State Building",
        "the Shard", "the Taj Mahal", "the Great Pyramid of Giza", "Niagara Falls",
        "Victoria Falls", "the Golden Gate Bridge", "the Sydney Opera House",
        "the Leaning Tower of Pisa", "Table Mountain", "Mount Fuji", "the Colosseum",
        "Machu Picchu", "Stonehenge", "the CN Tower", "the London Eye", "Angel Falls",
        "the Petronas Towers", "the Acropolis", "Petra", "Angkor Wat", "the Kremlin", "Uluru",
        "the Grand Canyon", "Mount Kenya", "the Matterhorn", "Christ the Redeemer",
        "the Alhambra",
    ),
    "device": (
        "TV", "television", "fan", "ceiling fan", "robot vacuum", "dishwasher",
        "washing machine", "tumble dryer", "coffee machine", "kettle", "electric blanket",
        "dehumidifier", "humidifier", "sound bar", "speakers", "projector",
        "Christmas lights", "radio", "space heater", "towel rail", "bread maker",
        "slow cooker", "games console", "extractor fan", "baby monitor", "air purifier",
        "microwave", "toaster", "rice cooker", "air fryer", "printer", "router",
        "pool pump", "sprinklers", "security camera",
    ),
    "door": (
        "front door", "back door", "garage door", "side gate", "patio door", "shed",
        "cat flap", "garden gate", "basement door", "balcony door", "main entrance",
        "bike shed",
    ),
    "tv_channel": (
        "BBC One", "BBC Two", "ITV", "Channel Five", "Netflix", "YouTube", "Disney Plus",
        "Prime Video", "the sports channel", "the cartoon channel", "Sky Sports",
        "the news channel", "the weather channel", "Discovery", "National Geographic", "MTV",
        "Comedy Central", "HBO", "Nickelodeon", "the shopping channel", "the music channel",
        "the film channel", "Sky Atlantic", "Cartoon Network", "the history channel",
    ),
    "fan_speed": (
        "low", "medium", "high", "maximum", "minimum", "turbo", "speed one", "speed two",
        "speed three", "sleep mode", "breeze mode",
    ),
    "news_topic": (
        "sports", "politics", "business", "technology", "science", "health", "entertainment",
        "football", "cricket", "basketball", "tennis", "Formula One", "climate", "education",
        "travel", "space", "local", "world", "economy", "celebrity", "fashion", "film",
        "gaming", "rugby", "property", "markets", "crime", "transport", "royal", "music",
        "arts", "motoring", "food", "energy", "golf",
    ),
    "news_source": (
        "BBC", "CNN", "Reuters", "Al Jazeera", "Sky News", "NPR", "the Guardian", "the Times",
        "Bloomberg", "Associated Press", "Channel Four", "ABC News", "the Washington Post",
        "Euronews", "the Financial Times", "the Independent", "Le Monde", "the Economist",
        "Fox News", "the Hindu", "CBC", "the Daily Nation", "Channels Television",
        "the Irish Times", "Deutsche Welle",
    ),
    "word": (
        "serendipity", "ubiquitous", "ephemeral", "melancholy", "resilient", "ambiguous",
        "pragmatic", "eloquent", "meticulous", "gregarious", "nostalgia", "paradox",
        "benevolent", "candid", "diligent", "frugal", "gullible", "hypothesis", "intrepid",
        "jubilant", "kaleidoscope", "lethargic", "mundane", "nonchalant", "obsolete",
        "plausible", "quintessential", "reluctant", "sceptical", "tenacious", "unanimous",
        "verbose", "whimsical", "zealous", "photosynthesis", "conscientious", "onomatopoeia",
        "entrepreneur", "necessary", "rhythm", "accommodate", "Wednesday", "colonel", "queue",
        "mischievous", "ostentatious", "ineffable", "loquacious", "perfunctory", "sycophant",
        "vicarious", "wanderlust", "zeitgeist", "juxtaposition", "idiosyncratic", "halcyon",
        "gargantuan", "facetious", "esoteric", "debacle", "cacophony", "bureaucracy",
        "anachronism", "apathy", "epitome", "hyperbole", "irony", "labyrinth", "mnemonic",
        "nuance",
    ),
    "phrase": (
        "good morning", "thank you very much", "where is the train station",
        "how much does this cost", "I would like a coffee", "nice to meet you",
        "see you tomorrow", "excuse me", "I don't understand", "can you help me",
        "where is the bathroom", "good night", "how are you", "I'm lost", "the bill please",
        "do you speak English", "I'm allergic to nuts", "what time is it", "congratulations",
        "welcome", "goodbye", "I love this city", "the food was delicious",
        "one ticket please", "left or right", "good afternoon", "how old are you",
        "I'm hungry", "where are you from", "please speak slowly", "I need a doctor",
        "call the police", "is this seat free", "can I pay by card", "a table for two",
        "I'm vegetarian", "what is your name", "no problem", "happy new year",
        "merry Christmas", "enjoy your meal", "see you later", "I'm sorry", "how far is it",
        "it's very hot today",
    ),
    "language": (
        "French", "Spanish", "German", "Italian", "Japanese", "Mandarin", "Swahili", "Hindi",
        "Yoruba", "Arabic", "Portuguese", "Korean", "Igbo", "Tamil", "Polish", "Dutch",
        "Zulu", "Urdu", "Russian", "Greek", "Turkish", "Vietnamese", "Thai", "Hausa",
        "Amharic",
    ),
    "party_size": (
        "two people", "three people", "four people", "five people", "six people",
        "seven people", "eight people", "nine people", "ten people", "twelve people",
        "just me", "the two of us", "the four of us", "a group of six", "a group of eight",
    ),
    "restaurant": (
        "Dishoom", "Nando's", "Wagamama", "Pizza Express", "Honest Burgers", "the Ivy",
        "Franco Manca", "Yauatcha", "the Golden Dragon", "Luigi's", "the Spice Garden",
        "the Blue Lagoon Grill", "the Red Lion", "Taj Palace", "Suya Spot", "the Olive Tree",
        "Sakura Sushi", "Casa Lola", "the Harbour Kitchen", "Bombay Bistro", "the Noodle Bar",
        "Le Petit Cafe", "Chez Marcel", "Bella Napoli", "the Jerk Shack", "Pho Saigon",
        "Seoul Kitchen", "Jollof House", "the Fish Market", "Green Garden Cafe",
        "the Steakhouse", "Shanghai Palace", "the Mango Tree", "Mama's Kitchen",
        "the Curry Leaf",
    ),
    "dish": (
        "a margherita pizza", "chicken tikka masala", "pad thai", "a cheeseburger",
        "fish and chips", "two samosas", "a chicken wrap", "vegetable fried rice",
        "a bowl of ramen", "sweet and sour chicken", "a lamb kebab", "jollof rice and chicken",
        "a Caesar salad", "beef tacos", "a veggie burger", "garlic bread", "lamb biryani",
        "pepper soup", "a tuna sandwich", "spring rolls", "chicken wings", "a falafel wrap",
        "sushi rolls", "a Greek salad", "butter chicken", "chips and gravy", "a bean burrito",
        "prawn crackers", "egg fried rice", "a chocolate milkshake", "mango lassi",
        "suya skewers", "pounded yam and egusi", "green curry", "a club sandwich",
        "tomato soup", "crispy duck", "beef stew", "a slice of cheesecake",
        "two plates of dumplings",
    ),
    "team": (
        "Arsenal", "Chelsea", "Liverpool", "Manchester United", "Manchester City", "Tottenham",
        "Everton", "Celtic", "Rangers", "Real Madrid", "Bayern Munich", "Juventus",
        "Paris Saint Germain", "Ajax", "Kaizer Chiefs", "Orlando Pirates", "Al Ahly",
        "Enyimba", "the Black Stars", "the Super Eagles", "the All Blacks", "the Springboks",
        "the Lakers", "the Warriors", "the Celtics", "the Yankees", "the Red Sox",
        "the Cowboys", "the Patriots", "the Chicago Bulls", "Mumbai Indians",
        "Chennai Super Kings", "the Toronto Raptors", "the Green Bay Packers", "England",
        "Wales", "the Wallabies", "the Miami Heat", "Leeds United", "Aston Villa",
        "Newcastle United", "Inter Milan", "Boca Juniors", "Flamengo", "the Blue Jays",
    ),
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "timer": (
        "Set a timer for {duration}.",
        "Set a {timer_label} timer for {duration}.",
        "Start a timer for {duration} for the {timer_label}.",
        "Set a timer for {duration} in the {room}.",
        "Set two timers, one for {duration} and one for {duration2}.",
        "Add {duration} to the {timer_label} timer.",
        "Set a {timer_label} timer for {duration} on the {room} speaker.",
        "Cancel the {timer_label} timer and set a new one for {duration}.",
        "How much time is left on the {timer_label} timer in the {room}?",
        "Count down {duration} for the {timer_label} and then play {song}.",
    ),
    "alarm": (
        "Set an alarm for {time}.",
        "Wake me up at {time} {day}.",
        "Set an alarm for {time} {repeat}.",
        "Change my {time} alarm to {time2}.",
        "Cancel the alarm for {time} {day}.",
        "Set an alarm for {time} {date}.",
        "Snooze the {room} alarm for {duration}.",
        "Do I have an alarm set for {time} {day}?",
        "Wake me up at {time} with {song}.",
        "Set an alarm in the {room} for {time} {repeat}.",
    ),
    "lights": (
        "Turn off the {room} lights at {time}.",
        "Turn on the lights in the {room}.",
        "Dim the {room} lights to {percent}.",
        "Set the {room} lights to {color}.",
        "Change the lights in the {room} to {color} at {percent}.",
        "Make the {room} lights {color} at {time}.",
        "Brighten the lights in the {room} to {percent}.",
        "Are the lights on in the {room} and the {room2}?",
        "Turn on the {room} lights at {percent} brightness.",
        "Switch off the lights in the {room} in {duration}.",
    ),
    "thermostat": (
        "Set the thermostat to {temperature} at {time}.",
        "Set the {room} to {temperature} {day}.",
        "Turn the heating up to {temperature} in the {room}.",
        "Turn the air conditioning down to {temperature} at {time}.",
        "Make it {temperature} in the {room} by {time}.",
        "What was the temperature in the {room} at {time}?",
        "Lower the temperature in the {room} by {temp_delta} at {time}.",
        "Switch the thermostat to {hvac_mode} mode at {time}.",
        "Set the heating to {temperature} {day} at {time}.",
        "Turn the heating off in the {room} in {duration}.",
    ),
    "weather": (
        "What's the weather like in {city} {day}?",
        "Will it rain in {city} {day}?",
        "Do I need an umbrella in {city} {day}?",
        "What's the forecast for {city} {date}?",
        "How hot will it be in {city} {day}?",
        "Is it going to snow in {city} {date}?",
        "What's the temperature in {city} right now?",
        "Will it be windy in {city} at {time}?",
        "Compare the weather in {city} and {city2} {day}.",
        "Should I wear a coat in {city} {day}?",
        "What time is sunset in {city} {date}?",
    ),
    "music": (
        "Play {song} by {artist}.",
        "Play some {genre} music in the {room}.",
        "Play {song} in the {room}.",
        "Put on something by {artist} in the {room}.",
        "Play {artist} in the {room} at {percent} volume.",
        "Shuffle my {genre} playlist in the {room}.",
        "Add {song} by {artist} to my {genre} playlist.",
        "Who sings {song}?",
        "Play the latest album by {artist} at {time}.",
        "Skip this song and play {song} by {artist} in the {room}.",
        "Play {song} and then something by {artist}.",
    ),
    "media_control": (
        "Turn the volume up to {percent} in the {room}.",
        "Set the volume to {percent}.",
        "Pause the music in the {room} for {duration}.",
        "Turn the volume down on the {device}.",
        "Mute the {device} in the {room}.",
        "Skip forward {duration}.",
        "Rewind {duration} on the {device}.",
        "Resume playback in the {room} at {percent} volume.",
        "Stop the music in the {room} at {time}.",
        "Move the music from the {room} to the {room2}.",
    ),
    "call": (
        "Call {contact} on their {phone_type}.",
        "Ring {contact} on speaker at {time}.",
        "Video call {contact} {day}.",
        "Start a video call with {contact} and {contact2}.",
        "Call {contact} back in {duration}.",
        "Dial {contact}'s {phone_type}.",
        "Call {contact} at {time} {day}.",
        "Did {contact} or {contact2} call me while I was out?",
        "Call {contact} on their {phone_type} at {time}.",
        "Add {contact2} to my call with {contact}.",
    ),
    "message": (
        "Send a message to {contact} saying {message}.",
        "Text {contact} that {message}.",
        "Let {contact} know {message}.",
        "Tell {contact} {message}.",
        "Message {contact} and {contact2} that {message}.",
        "Reply to {contact} saying {message}.",
        "Read my messages from {contact} and {contact2}.",
        "Text {contact} at {time} saying {message}.",
        "Send a voice message to {contact} and {contact2}.",
        "Send {contact} a WhatsApp saying {message}.",
    ),
    "email": (
        "Email {contact} about the {event}.",
        "Send an email to {contact} and {contact2} saying {message}.",
        "Read my latest email from {contact}.",
        "Do I have any emails from {contact} about the {event}?",
        "Forward the email from {contact} to {contact2}.",
        "Reply to {contact}'s email saying {message}.",
        "Send an email to {contact} at {time} about the {event}.",
        "Delete the emails from {contact} about the {event}.",
        "Email {contact} that {message}.",
    ),
    "navigation": (
        "Navigate to {place} in {city}.",
        "How long will it take to drive to {place} at {time}?",
        "Get directions to {place} in {city} avoiding {avoid}.",
        "How far is {place} from {place2}?",
        "Find a {poi} near {place}.",
        "Find the nearest {poi} in {city}.",
        "Show me the {travel_mode} route to {place} in {city}.",
        "What's the traffic like on the way to {place} at {time}?",
        "Add a stop at a {poi} on the way to {place}.",
        "Send my arrival time at {place} to {contact}.",
        "Take me to {place} by {time} and avoid {avoid}.",
    ),
    "ride": (
        "Book a taxi from {place} to {place2} at {time}.",
        "Get me a cab to {place} in {city}.",
        "Order a taxi to {place} for {time} {day}.",
        "How much is a taxi from {place} to {place2}?",
        "Cancel my taxi to {place}.",
        "Where is my taxi to {place}?",
        "Book a taxi for {party_size} to {place} at {time}.",
        "Book a ride to {place} in {duration}.",
        "Send a taxi to pick up {contact} from {place}.",
    ),
    "travel": (
        "Find flights from {city} to {city2} {day}.",
        "Is my flight to {city} on time?",
        "When does my flight to {city} leave {day}?",
        "Check me in for my flight to {city} {date}.",
        "How long is the flight from {city} to {city2}?",
        "Find a train from {city} to {city2} at {time}.",
        "Book a return ticket to {city} {date}.",
        "Book a hotel in {city} for {party_size} {date}.",
        "What gate is my flight to {city} leaving from?",
        "Find me a cheap flight to {city} {date}.",
    ),
    "restaurant": (
        "Book a table for {party_size} at {restaurant} {day} at {time}.",
        "Reserve a table at {restaurant} for {time} {date}.",
        "Is {restaurant} open {day}?",
        "What time does {restaurant} close {day}?",
        "Cancel my booking at {restaurant} {day}.",
        "Order {dish} from {restaurant}.",
        "Order {dish} and {dish2} from {restaurant}.",
        "How long will my order from {restaurant} take?",
        "Find a table for {party_size} in {city} at {time}.",
        "Order {dish} for delivery at {time}.",
    ),
    "shopping_list": (
        "Add {item} to my shopping list.",
        "Put {item} and {item2} on the shopping list.",
        "Remove {item} from my {list_name} list.",
        "Did I put {item} on the {list_name} list?",
        "Add {item} to my {list_name} list.",
        "Add {item}, {item2} and {item3} to the {list_name} list.",
        "Take {item} and {item2} off the {list_name} list.",
        "We're out of {item}, add it to the {list_name} list.",
        "Move {item} from the {list_name} list to the shopping list.",
        "Share my {list_name} list with {contact}.",
    ),
    "todo_list": (
        "Add {task} to my to do list {day}.",
        "I need to {task} {day}, add it to my list.",
        "Mark {task} and {task2} as done.",
        "What's on my to do list {date}?",
        "Remove {task} from my to do list.",
        "Add {task} and {task2} to my to do list {day}.",
        "Tick off {task} on {contact}'s to do list.",
        "Add {task} to {contact}'s to do list {date}.",
        "Put {task} at the top of my to do list.",
        "Share my to do list with {contact} and {contact2}.",
    ),
    "reminder": (
        "Remind me to {task} at {time}.",
        "Remind me to {task} {day} at {time}.",
        "Remind me in {duration} to {task}.",
        "Set a reminder to {task} {date}.",
        "Remind me to {task} when I get to {place}.",
        "What reminders do I have {day}?",
        "Delete the reminder to {task} {day}.",
        "Remind {contact} to {task} at {time}.",
        "Remind me {repeat} at {time} to {task}.",
        "Don't let me forget to {task} {date}.",
    ),
    "calendar": (
        "What's on my calendar {date}?",
        "Schedule a {event} with {contact} {day} at {time}.",
        "Add a {event} to my calendar {date} at {time}.",
        "When is my next {event} with {contact}?",
        "Cancel my {event} {day}.",
        "Move my {event} to {time} {day}.",
        "Invite {contact} to the {event} {date}.",
        "Am I free {date} at {time}?",
        "Book a {event} for {time} {day}.",
        "Who is coming to the {event} {date}?",
    ),
    "conversion": (
        "How many {distance_unit} is {distance}?",
        "Convert {distance} to {distance_unit}.",
        "How many {weight_unit} are in {weight}?",
        "Which is heavier, {weight} or {weight2}?",
        "What's {volume} in {volume_unit}?",
        "How many {volume_unit} make {volume}?",
        "What's {temperature} in Fahrenheit?",
        "How much is {money} in {currency}?",
        "Convert {money} to {currency} and {currency2}.",
        "Which is longer, {distance} or {distance2}?",
    ),
    "facts": (
        "Who was {person}?",
        "When was {person} born?",
        "What is the capital of {country}?",
        "How many people live in {country}?",
        "How far is {landmark} from {city}?",
        "Do {animal} live in {country}?",
        "Which is bigger, {country} or {country2}?",
        "Tell me a fun fact about {animal}.",
        "What time is it in {city}?",
        "How far is {city} from {city2}?",
        "Did {person} ever visit {country}?",
        "Who was older, {person} or {person2}?",
    ),
    "sports": (
        "Did {team} win last night?",
        "When do {team} play {team2}?",
        "What's the score between {team} and {team2}?",
        "Who scored for {team} against {team2}?",
        "When is the next match between {team} and {team2}?",
        "Record the match between {team} and {team2} at {time}.",
        "Where are {team} in the league table?",
        "Who is playing for {team} {day}?",
        "Remind me when {team} play {team2} {day}.",
    ),
    "device_control": (
        "Turn on the {device} in the {room}.",
        "Switch off the {device} at {time}.",
        "Lock the {door} at {time}.",
        "Is the {door} locked?",
        "Unlock the {door} for {contact}.",
        "Vacuum the {room} at {time}.",
        "Put the TV on {tv_channel} at {time}.",
        "Turn the {device} off in {duration}.",
        "Set the fan in the {room} to {fan_speed}.",
        "Start the {device} at {time} {day}.",
        "Open the {door} and turn on the {device}.",
    ),
    "news": (
        "Tell me the latest {news_topic} news from {country}.",
        "What are today's headlines from {news_source} about {city}?",
        "Play the {news_topic} news from {news_source}.",
        "Give me a news briefing about {news_topic} at {time}.",
        "What's happening in {city} today?",
        "Read me the {news_topic} headlines from {news_source}.",
        "What's the latest news from {city} and {city2}?",
        "Is there any {news_topic} news from {country}?",
        "Play {news_source} news in the {room} at {time}.",
    ),
    "dictionary": (
        "What does {word} mean?",
        "How do you spell {word}?",
        "Define the word {word}.",
        "What's a synonym for {word}?",
        "Use {word} and {word2} in a sentence.",
        "How do you say {phrase} in {language}?",
        "Translate {phrase} into {language}.",
        "What's the opposite of {word}?",
        "How do you say {word} in {language} and {language2}?",
    ),
    "math": (
        "What's {number} plus {number2}?",
        "What is {number} times {number2}?",
        "What's {number} divided by {number2}?",
        "What's the square root of {number}?",
        "What's {percent} of {number}?",
        "Calculate {number} minus {number2}.",
        "Is {number} a prime number?",
        "What's {number} squared?",
        "What's the tip on {money} at {percent}?",
    ),
}

# fmt: on

INTENTS: tuple[str, ...] = tuple(TEMPLATES)

# '{name}' or '{name2}': group 1 is the slot list, trailing digits only tell repeats apart
_FIELD = re.compile(r"\{([a-z_]+?)\d*\}")


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@cache
def partition(items: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Split items about 70/10/20 into 'train' / 'dev' / 'test', each part non-empty.

    Items are ranked by a hashlib digest of their text (stable across runs and Python
    versions); the first fifth (rounded) goes to test, the next tenth to dev, the rest to
    train. Each part keeps the items' original order.
    """
    n = len(items)
    if n < 3:
        raise ValueError(f"cannot partition {n} items into three non-empty parts")
    n_test, n_dev = max(1, (2 * n + 5) // 10), max(1, (n + 5) // 10)
    ranked = sorted(items, key=lambda item: _digest("partition:" + item))
    test, dev = ranked[:n_test], ranked[n_test : n_test + n_dev]
    part = {**dict.fromkeys(test, "test"), **dict.fromkeys(dev, "dev")}
    return {
        name: tuple(item for item in items if part.get(item, "train") == name)
        for name in ("train", "dev", "test")
    }


def slot_lists(template: str) -> tuple[str, ...]:
    """The SLOTS list behind each field of a template, in order."""
    return tuple(_FIELD.findall(template))


def _combos(lists: Sequence[tuple[str, ...]]) -> Iterator[tuple[str, ...]]:
    """Value combinations for one template: all of them, or MAX_COMBOS_PER_TEMPLATE spread
    evenly over all of them (index j * step mod total, with step coprime to total)."""
    total = math.prod(map(len, lists))
    if total <= MAX_COMBOS_PER_TEMPLATE:
        yield from itertools.product(*lists)
        return
    step = int(total * 0.6180339887)
    while math.gcd(step, total) != 1:
        step += 1
    for j in range(MAX_COMBOS_PER_TEMPLATE):
        index, combo = j * step % total, []
        for values in reversed(lists):
            index, k = divmod(index, len(values))
            combo.append(values[k])
        yield tuple(reversed(combo))


@cache
def _may_overlap(first: str, second: str) -> bool:
    """Whether a value of one slot list can be a value of, or part of a value of, the other."""

    def parts(values: tuple[str, ...]) -> set[str]:
        runs = set()
        for value in values:
            words = value.split()
            runs.update(" ".join(words[i:j]) for j in range(len(words) + 1) for i in range(j))
        return runs

    one, two = SLOTS[first], SLOTS[second]
    return bool(parts(one) & set(two) or parts(two) & set(one))


def _overlapping(combo: tuple[str, ...]) -> bool:
    """Whether a value recurs in, or is part of, another ('milk and milk', 'How many feet is
    thirty feet', 'Remind Grandma to call Grandma')."""
    return any(a in b and f" {a} " in f" {b} " for a, b in itertools.permutations(combo, 2))


def _is_heldout(sentence: str) -> bool:
    return _digest("heldout:" + sentence) % HELDOUT_EVERY == 0


@cache
def _sentences(part: str) -> dict[str, tuple[str, ...]]:
    """intent -> the distinct sentences that a template/value part ('train', 'dev' or 'test')
    yields; a sentence that two intents share goes to the first."""
    seen: set[str] = set()
    out = {}
    for intent in INTENTS:
        sentences = []
        for template in partition(TEMPLATES[intent])[part]:
            form, names = _FIELD.sub("{}", template), slot_lists(template)
            lists = [partition(SLOTS[name])[part] for name in names]
            check = any(_may_overlap(*pair) for pair in itertools.combinations(names, 2))
            for combo in _combos(lists):
                if check and _overlapping(combo):
                    continue
                text = form.format(*combo)
                text = text[0].upper() + text[1:]
                if MIN_WORDS <= text.count(" ") + 1 <= MAX_WORDS and text not in seen:
                    seen.add(text)
                    sentences.append(text)
        out[intent] = tuple(sentences)
    return out


@cache
def _train_and_heldout() -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    train, heldout = {}, {}
    for intent, sentences in _sentences("train").items():
        held = [_is_heldout(text) for text in sentences]
        train[intent] = tuple(t for t, h in zip(sentences, held, strict=True) if not h)
        heldout[intent] = tuple(t for t, h in zip(sentences, held, strict=True) if h)
    return train, heldout


def _pools(split: str) -> dict[str, tuple[str, ...]]:
    """intent -> the distinct sentences of a split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if split in ("dev", "test"):
        return _sentences(split)
    train, heldout = _train_and_heldout()
    return train if split == "train" else heldout


def count(split: str) -> int:
    """Number of distinct sentences in a split."""
    return sum(map(len, _pools(split).values()))


def _quotas(sizes: list[int], n: int) -> list[int]:
    """Share n out as evenly as sizes allow (what a small intent cannot take goes to the rest)."""
    quotas = [0] * len(sizes)
    while n:
        open_ = [i for i, size in enumerate(sizes) if quotas[i] < size]
        share, extra = divmod(n, len(open_))
        for rank, i in enumerate(open_):
            take = min(sizes[i] - quotas[i], share + (rank < extra))
            quotas[i] += take
            n -= take
    return quotas


def sample(split: str, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """n distinct (intent, sentence) pairs from a split, intents as balanced as their sizes
    allow, in random order; the same rng state gives the same list."""
    pools = _pools(split)
    available = count(split)
    if not 0 <= n <= available:
        raise ValueError(f"asked for {n} sentences but split {split!r} has {available}")
    quotas = _quotas([len(pools[intent]) for intent in INTENTS], n)
    chosen = []
    for intent, quota in zip(INTENTS, quotas, strict=True):
        pool = pools[intent]
        chosen += [(intent, pool[i]) for i in rng.choice(len(pool), size=quota, replace=False)]
    return [chosen[i] for i in rng.permutation(len(chosen))]
