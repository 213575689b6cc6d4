"""The word lists of the shipped RLHF task: common English words grouped by topic.

Every word belongs to exactly one topic (a test checks it), and words that name two things in
different topics (orange, bat, squash, cricket, …) are left out, so the oracle's verdict on a
word never depends on a reading of it. Topics are listed in a fixed order; ``TaskConfig.n_topics``
takes the first n.
"""
from __future__ import annotations

TOPICS: dict[str, tuple[str, ...]] = {
    "fruits": ("apple", "banana", "pear", "grape", "cherry", "plum", "mango", "melon", "lemon",
               "peach", "apricot", "kiwi", "papaya", "coconut", "strawberry", "raspberry",
               "blueberry", "pineapple", "fig", "guava"),
    "animals": ("dog", "cat", "horse", "cow", "sheep", "goat", "pig", "lion", "tiger", "bear",
                "wolf", "fox", "rabbit", "mouse", "deer", "zebra", "elephant", "monkey", "camel",
                "giraffe"),
    "colors": ("red", "blue", "green", "yellow", "purple", "pink", "brown", "black", "white",
               "gray", "violet", "indigo", "crimson", "scarlet", "turquoise", "beige", "maroon",
               "magenta", "cyan", "navy"),
    "vegetables": ("carrot", "potato", "onion", "garlic", "cabbage", "lettuce", "spinach",
                   "broccoli", "celery", "pea", "bean", "tomato", "cucumber", "pumpkin",
                   "radish", "turnip", "beet", "leek", "corn", "kale"),
    "vehicles": ("car", "bus", "truck", "train", "bicycle", "motorcycle", "tram", "taxi", "van",
                 "tractor", "airplane", "helicopter", "ship", "boat", "scooter", "ferry", "yacht",
                 "jeep", "subway", "canoe"),
    "pieces of clothing": ("shirt", "trousers", "jacket", "coat", "dress", "skirt", "sweater", "sock",
                "shoe", "boot", "hat", "scarf", "glove", "belt", "tie", "vest", "jeans", "shorts",
                "blouse", "cap"),
    "jobs": ("doctor", "nurse", "teacher", "farmer", "lawyer", "pilot", "baker", "butcher",
             "plumber", "carpenter", "engineer", "dentist", "soldier", "sailor", "painter",
             "writer", "singer", "judge", "banker", "waiter"),
    "pieces of furniture": ("chair", "table", "sofa", "bed", "desk", "shelf", "cupboard", "wardrobe",
                  "stool", "bench", "couch", "dresser", "cabinet", "bookcase", "armchair",
                  "cradle", "crib", "ottoman", "sideboard", "hammock"),
    "body parts": ("head", "arm", "leg", "hand", "foot", "finger", "toe", "knee", "elbow",
                   "shoulder", "neck", "nose", "mouth", "ear", "eye", "chin", "ankle", "wrist",
                   "lip", "tongue"),
    "sports": ("football", "tennis", "golf", "hockey", "rugby", "baseball", "basketball",
               "volleyball", "swimming", "boxing", "skiing", "rowing", "cycling", "wrestling",
               "fencing", "archery", "surfing", "karate", "judo", "badminton"),
    "kinds of weather": ("rain", "snow", "wind", "fog", "hail", "storm", "thunder", "lightning",
                "sunshine", "drizzle", "frost", "sleet", "mist", "breeze", "gale", "blizzard",
                "hurricane", "tornado", "drought", "heatwave"),
    "drinks": ("water", "tea", "coffee", "milk", "juice", "beer", "wine", "cocoa", "soda",
               "lemonade", "cider", "whisky", "vodka", "rum", "gin", "brandy", "champagne",
               "smoothie", "milkshake", "espresso"),
    "tools": ("hammer", "saw", "drill", "wrench", "screwdriver", "pliers", "chisel", "axe",
              "shovel", "rake", "spade", "ladder", "crowbar", "pickaxe", "sander", "trowel",
              "sickle", "scythe", "mallet", "clamp"),
    "musical instruments": ("piano", "guitar", "violin", "flute", "trumpet", "drum", "cello", "harp",
                    "clarinet", "saxophone", "trombone", "oboe", "banjo", "ukulele", "tuba",
                    "accordion", "bagpipes", "harmonica", "xylophone", "mandolin"),
    "family members": ("mother", "father", "sister", "brother", "aunt", "uncle", "cousin",
                       "niece", "nephew", "grandmother", "grandfather", "daughter", "son",
                       "wife", "husband", "grandson", "granddaughter", "stepfather",
                       "stepmother", "twin"),
    "buildings": ("house", "school", "hospital", "church", "castle", "tower", "factory",
                  "cinema", "museum", "hotel", "prison", "temple", "barn", "cottage", "palace",
                  "stadium", "warehouse", "mosque", "cathedral", "skyscraper"),
}

NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five", "six", "seven", "eight",
                                 "nine", "ten", "eleven", "twelve")
"""Counts a prompt can ask for; ``NUMBER_WORDS[n - 1]`` spells n."""

PROMPT_TEMPLATES: tuple[str, ...] = ("List {count} {topic}.", "Name {count} {topic}.",
                                     "Write down {count} {topic}.", "Give me {count} {topic}.")
"""How a prompt asks; every template names the count and the topic, which is all the oracle reads."""
