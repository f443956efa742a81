"""Word lists the rule parser decides with. Plain sets, so a missed phrasing is fixed by adding a word."""

COLOURS = {
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "black", "white", "grey", "gray", "brown",
    "violet", "indigo", "cyan", "magenta", "turquoise", "teal", "beige", "tan", "maroon", "navy", "crimson",
    "scarlet", "gold", "golden", "silver", "bronze", "copper", "lavender", "lilac", "olive", "lime", "mint",
    "peach", "coral", "cream", "ivory", "khaki", "burgundy", "aqua", "amber", "emerald", "ruby", "rainbow",
    "blonde", "blond", "brunette", "ginger", "auburn", "platinum", "rose", "sepia", "monochrome", "colorful",
    "colourful", "multicolored", "multicoloured", "neon", "pastel",
}

# Words that only modify a colour or an adjective ("bright blue", "twice as big").
MODIFIERS = {
    "light", "dark", "bright", "pale", "deep", "vivid", "dull", "matte", "glossy", "metallic", "shiny", "very",
    "more", "less", "slightly", "much", "bit", "a", "little", "twice", "as", "so", "too", "really", "extremely",
    "and", "or", "with", "of", "completely", "fully", "all", "entirely", "baby", "sky", "hot", "royal", "forest",
    "navy", "blood", "jet", "snow", "off", "lighter", "darker", "brighter",
}

MATERIALS = {
    "wood", "wooden", "metal", "metallic", "steel", "iron", "glass", "marble", "stone", "brick", "leather",
    "velvet", "silk", "cotton", "wool", "woolen", "woollen", "denim", "plastic", "paper", "cardboard", "concrete",
    "gold", "golden", "silver", "bronze", "copper", "chrome", "crystal", "ceramic", "porcelain", "clay", "bamboo",
    "rubber", "fabric", "fur", "furry", "ice", "icy", "chocolate", "lego", "knitted", "wicker", "granite",
    "rattan", "straw", "tin", "aluminum", "aluminium", "jade", "diamond", "pixelated", "candy", "lace",
}

ADJECTIVES = {
    "big", "small", "large", "tiny", "huge", "giant", "tall", "short", "long", "wide", "narrow", "thick", "thin",
    "fat", "skinny", "slim", "dark", "bright", "dim", "pale", "vivid", "glossy", "matte", "shiny", "chubby",
    "muscular", "old", "new", "young", "ancient", "modern", "happy", "sad",
    "angry", "surprised", "scared", "afraid", "shocked", "excited", "bored", "tired", "sleepy", "calm",
    "serious", "worried", "confused", "disgusted", "furious", "joyful", "smiling", "crying", "laughing",
    "frowning", "messy", "clean", "dirty", "tidy", "broken", "cracked", "rotten", "ripe", "unripe", "fresh",
    "wet", "dry", "frozen", "melted", "melting", "burnt", "burned", "lit", "unlit", "open", "closed", "shut",
    "on", "off", "empty", "full", "shiny", "dull", "fluffy", "fuzzy", "hairy", "bald", "curly", "straight",
    "wavy", "spiky", "striped", "spotted", "dotted", "checkered", "plaid", "floral", "transparent",
    "translucent", "opaque", "wilted", "bare", "snowy", "stormy", "cloudy", "sunny", "rainy", "foggy",
    "misty", "murky", "clear", "muddy", "dusty", "rusty", "sandy", "leafy", "grassy", "glowing", "sparkly",
    "sparkling", "blurry", "sharp", "smooth", "rough", "wrinkled", "crumpled", "torn", "tattered", "shabby",
    "abandoned", "ruined", "damaged", "new", "vintage", "retro", "futuristic", "elegant", "fancy", "cute",
    "scary", "spooky", "creepy", "evil", "beautiful", "ugly", "pretty", "handsome", "bearded", "tattooed",
    "upside", "down", "sideways", "reflective", "fuller", "emptier", "hollow", "solid", "round", "square",
    "flat", "pointy", "bent", "folded", "inflated", "deflated", "dead", "alive", "healthy", "sick", "wild",
    "tame", "hungry", "asleep", "awake", "naked", "dressed", "tanned", "pale", "colored", "coloured",
    "painted", "sunburned", "aged", "older", "younger", "bigger", "smaller", "larger", "taller", "shorter",
    "longer", "wider", "narrower", "thicker", "thinner", "fatter", "slimmer", "happier", "sadder", "angrier",
    "cleaner", "dirtier", "messier", "brighter", "darker", "lighter", "fluffier", "shinier", "clearer",
    "greener", "redder", "bluer", "warmer", "cooler", "colder", "hotter", "rounder", "smoother", "rougher",
    "curlier", "straighter", "heavier", "higher", "lower", "closer", "farther", "further", "neater", "wetter",
    "drier", "fuller", "muscular", "chubbier", "skinnier", "prettier", "uglier", "scarier", "cuter",
}

# Pose, expression and action verbs: "make the man smile", "the dog should be sitting".
POSE_VERBS = {
    "smile", "laugh", "cry", "frown", "grin", "wink", "sit", "stand", "lie", "lay", "kneel", "crouch", "squat",
    "jump", "run", "walk", "dance", "wave", "sleep", "yawn", "raise", "lift", "lower", "spread", "open", "close",
    "fly", "swim", "point", "bow", "lean", "stretch", "fold", "cross", "clap", "shout",
    "scream", "sing", "sneeze", "bark", "roar", "melt", "bloom", "burn", "fall", "float", "sink", "rise",
    "shrug", "pose", "climb", "kick", "hop", "blink", "pout", "give", "hug", "kiss", "rest", "play", "eat",
    "drink", "read", "write", "sulk", "glare", "stare", "nod", "salute", "rear", "curl", "roll", "tilt", "bend",
}

# Verbs that bring a new object along: "let the man wear a hat", "have the woman hold an umbrella".
ADD_VERBS = {
    "wear", "hold", "carry", "have", "catch", "eat", "drink", "ride", "use", "read", "wield", "sport",
    "don", "grab", "get", "play", "throw", "kick", "push", "pull", "take", "bring", "own", "drive", "fly",
    "hug", "feed", "walk", "lick", "sniff", "smoke",
}

# The -ing forms of ADD_VERBS, as in "the man should be wearing a tie".
ADD_GERUNDS = {
    "wearing", "holding", "carrying", "having", "catching", "eating", "drinking", "riding", "hugging",
    "using", "reading", "wielding", "sporting", "grabbing", "playing", "throwing", "kicking", "pushing",
    "pulling", "driving", "flying", "feeding", "walking", "licking", "sniffing", "smoking",
}

# Nouns naming a property rather than an object ("the car's colour", "the expression of the boy").
ATTRIBUTE_NOUNS = {
    "color", "colour", "colors", "colours", "material", "materials", "texture", "expression", "pose",
    "fabric", "pattern", "shape", "size", "hue", "shade", "finish", "posture", "position",
    "paint", "tone", "look", "appearance", "surface", "emotion", "mood", "action", "activity",
    "gesture", "state", "condition", "movement", "orientation", "direction",
}

# Phrases that mean the whole image: an edit of these is global.
SCENE_WORDS = {
    "it", "this", "that", "everything", "image", "photo", "photograph", "picture", "pic", "scene", "background",
    "weather", "season", "time", "lighting", "style", "environment", "setting", "atmosphere",
    "mood", "tone", "color", "colour", "world", "backdrop",
    "overall", "palette", "color palette", "colour palette", "brightness", "contrast", "saturation", "exposure",
    "sharpness", "view", "painting style", "art style", "aesthetic", "vibe",
    # times of day and seasons: "turn day into night", "change summer to winter"
    "day", "daytime", "night", "nighttime", "summer", "winter", "spring", "autumn",
}
# Head nouns that make any phrase mean the whole image ("the daytime scene", "the whole photo").
SCENE_HEADS = {
    "image", "photo", "photograph", "picture", "pic", "scene", "background", "backdrop", "weather", "season",
    "lighting", "style", "environment", "setting", "atmosphere", "everything",
}

# Things one "adds" to a whole image: weather, light and filters. "add snow" is a global edit.
GLOBAL_ADDITIONS = {
    "snow", "snowfall", "rain", "fog", "mist", "haze", "smog", "storm", "thunderstorm", "sunshine", "sunlight",
    "sunset", "sunrise", "dusk", "dawn", "twilight", "night", "filter", "effect", "tone", "tint", "vignette",
    "glow", "lens flare", "blur", "grain", "film grain", "noise", "light leak", "bokeh", "contrast",
    "saturation", "brightness", "exposure", "lighting", "style", "overlay", "warmth", "color grading",
    "snowstorm", "drizzle", "blizzard", "light",
}

# Verbs whose object is the whole image ("apply a sepia tone", "increase the brightness").
GLOBAL_VERBS = {
    "apply", "increase", "decrease", "reduce", "boost", "enhance", "adjust", "brighten", "darken", "sharpen",
    "blur", "saturate", "desaturate", "stylize", "stylise", "extend", "outpaint", "zoom", "colorize",
    "colourise", "colorise", "render", "cartoonize", "cartoonise", "sketch", "improve", "restore", "denoise",
    "upscale", "crop", "invert", "filter", "expand", "relight",
}

# Container nouns keep their "of" complement ("a cup of coffee"); quantity nouns are dropped ("a pair of").
CONTAINERS = {
    "cup", "cups", "glass", "glasses", "vase", "vases", "bowl", "bowls", "plate", "plates", "basket", "baskets",
    "bottle", "bottles", "box", "boxes", "jar", "jars", "stack", "stacks", "pile", "piles", "bag", "bags",
    "bucket", "buckets", "mug", "mugs", "pot", "pots", "tray", "trays", "bouquet", "bouquets", "slice", "slices",
    "piece", "pieces", "can", "cans", "carton", "cartons", "pitcher", "plateful", "sack", "loaf", "bar", "bars",
    "statue", "picture", "painting", "photo", "portrait", "map", "head", "field", "wall", "ball", "cloud",
}
QUANTITIES = {
    "pair", "pairs", "couple", "bunch", "bunches", "group", "groups", "lot", "lots", "number", "set", "sets",
    "flock", "herd", "swarm", "pack", "crowd", "school", "few", "handful", "dozen", "dozens", "row", "rows",
    "line", "bit", "kind", "type", "sort", "variety", "collection", "cluster", "one", "some", "all", "each",
    "two", "three", "four", "several", "many", "both", "any", "none", "most", "rest", "half",
}

DETERMINERS = {
    "a", "an", "the", "some", "any", "all", "every", "each", "this", "that", "these", "those", "his", "her",
    "its", "their", "my", "your", "our", "one", "two", "three", "four", "five", "six", "seven", "eight",
    "nine", "ten", "few", "several", "many", "more", "another", "other", "extra", "additional", "both",
    "couple", "lot", "lots", "of", "single", "second", "new", "same", "whole", "entire", "various", "numerous",
}

# Words that end a noun phrase: what follows them locates or describes the object, it is not the object.
PHRASE_BREAKS = {
    "in", "on", "at", "to", "from", "with", "near", "next", "beside", "besides", "behind", "under", "over",
    "above", "below", "by", "into", "onto", "around", "inside", "outside", "across", "along", "against",
    "between", "through", "toward", "towards", "among", "underneath", "atop", "off", "for", "that", "which",
    "who", "whom", "where", "while", "so", "because", "like", "and", "or", "but", "instead", "than", "as",
    "upon", "beneath", "within", "without", "is", "are", "was", "were", "be", "should", "has", "have", "if",
    "then", "too", "also", "here", "there", "now", "please", "again", "anymore", "up", "out", "down", "away",
}

# -ing and -ed words that are nouns or pre-modifiers, not a clause ("a building", "a stuffed rabbit").
ING_ED_NOUNS = {
    "building", "painting", "ring", "earring", "king", "wing", "string", "ceiling", "clothing", "swing",
    "sling", "spring", "evening", "morning", "icing", "frosting", "stuffing", "pudding", "dumpling",
    "stocking", "awning", "railing", "siding", "drawing", "carving", "wedding", "sibling", "duckling",
    "seedling", "sapling", "bedding", "bed", "shed", "sled", "red", "seed", "steed", "reed", "weed", "bread",
    "thread", "head", "sled", "lightning", "sailing", "skiing", "ceiling", "living", "dining", "parking",
    "clipping", "topping", "stuffed", "wrapping", "ping", "bling", "pudding", "filling", "coating",
    "shed", "sheds", "hundred", "sacred", "naked", "wicked", "beloved",
}

# Words ending in "s" that are not plurals to strip: plural-only nouns and singulars in -s.
UNCHANGED_S = {
    "glasses", "sunglasses", "eyeglasses", "goggles", "pants", "jeans", "shorts", "trousers", "scissors",
    "headphones", "earphones", "earbuds", "clothes", "binoculars", "tongs", "pajamas", "pyjamas", "overalls",
    "leggings", "tights", "stairs", "news", "series", "species", "chess", "lens", "bus", "gas", "canvas",
    "cactus", "octopus", "hippopotamus", "circus", "walrus", "iris", "fungus", "virus", "tennis", "christmas",
    "lotus", "status", "bonus", "chaos", "oasis", "pegasus", "platypus", "asparagus", "hummus", "couscous",
    "citrus", "his", "its", "this", "is", "was", "has", "as", "us", "yes", "plus", "always", "perhaps",
    "analysis", "axis", "chassis", "dais", "atlas", "bias", "alias", "abyss", "physics", "mathematics",
}

IRREGULAR_PLURALS = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse", "geese": "goose",
    "teeth": "tooth", "feet": "foot", "oxen": "ox", "leaves": "leaf", "knives": "knife", "wives": "wife",
    "lives": "life", "wolves": "wolf", "shelves": "shelf", "loaves": "loaf", "halves": "half", "calves": "calf",
    "elves": "elf", "scarves": "scarf", "thieves": "thief", "hooves": "hoof", "dice": "die", "cacti": "cactus",
    "fungi": "fungus", "octopi": "octopus", "policemen": "policeman", "firemen": "fireman",
    "fishermen": "fisherman", "snowmen": "snowman", "gentlemen": "gentleman", "potatoes": "potato",
    "tomatoes": "tomato", "heroes": "hero", "volcanoes": "volcano", "mangoes": "mango", "buses": "bus",
    "lenses": "lens", "gases": "gas", "cactuses": "cactus", "octopuses": "octopus", "axes": "axe",
    "movies": "movie", "cookies": "cookie", "pies": "pie", "ties": "tie", "bowties": "bowtie",
    "brownies": "brownie", "zombies": "zombie", "hippies": "hippie", "selfies": "selfie", "goalies": "goalie",
    "smoothies": "smoothie", "mustaches": "mustache", "moustaches": "moustache", "avalanches": "avalanche",
    "headaches": "headache", "niches": "niche", "quizzes": "quiz",
}

# "him" and "her" name a person the detector can find; "them" too.
PRONOUNS = {"he": "man", "him": "man", "himself": "man", "she": "woman", "her": "woman", "herself": "woman",
            "they": "person", "them": "person", "someone": "person", "somebody": "person"}

