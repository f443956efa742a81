"""Instruction texts for synthetic edits, phrased in the varied ways real editing corpora are."""

NOUNS = {
    "ball": ("ball", "sphere", "orb"), "circle": ("circle", "disc"), "square": ("square", "box", "block"),
    "rectangle": ("rectangle", "bar"), "triangle": ("triangle",), "star": ("star",),
    "hexagon": ("hexagon",), "ellipse": ("oval", "ellipse", "egg"), "ring": ("ring", "donut"),
    "heart": ("heart",), "cross": ("cross", "plus sign"), "diamond": ("diamond", "rhombus"),
    "crescent": ("crescent", "moon"),
}

ADD = ("add {a} {target}{where}", "put {a} {target}{where}", "place {a} {target}{where}",
       "insert {a} {target}{where}", "draw {a} {target}{where}", "there should be {a} {target}{where}",
       "let there be {a} {target}{where}", "include {a} {target}{where}", "could you add {a} {target}{where}?",
       "I want {a} {target}{where}")
REMOVE = ("remove the {source}", "delete the {source}", "erase the {source}", "take away the {source}",
          "get rid of the {source}", "take out the {source}", "make the {source} disappear",
          "there should be no {source}", "remove the {source}{where}", "can you remove the {source}?",
          "without the {source}", "lose the {source}{where}")
REPLACE = ("replace the {source} with {a} {target}", "turn the {source} into {a} {target}",
           "change the {source} to {a} {target}", "change the {source} into {a} {target}",
           "swap the {source} for {a} {target}", "make the {source} {a} {target}",
           "the {source} should be {a} {target}", "put {a} {target} in place of the {source}",
           "what if the {source} was {a} {target}?", "have the {source} be {a} {target}",
           "instead of the {source}, there should be {a} {target}")
RECOLOUR = ("make the {source} {target}", "change the colour of the {source} to {target}",
            "change the color of the {source} to {target}", "paint the {source} {target}",
            "turn the {source} {target}", "colour the {source} {target}", "the {source} should be {target}",
            "recolor the {source} {target}", "make the {source} {target} instead", "can the {source} be {target}?")
ATTRIBUTES = {
    "striped": ("make the {source} striped", "give the {source} stripes", "paint stripes on the {source}",
                "the {source} should have stripes"),
    "checkered": ("make the {source} checkered", "give the {source} a checkered pattern",
                  "the {source} should have a checkerboard pattern"),
    "polka-dotted": ("make the {source} polka-dotted", "cover the {source} with polka dots",
                     "give the {source} dots"),
    "darker": ("make the {source} darker", "darken the {source}", "the {source} should be darker"),
    "brighter": ("make the {source} brighter", "lighten the {source}", "make the {source} lighter"),
}
GLOBAL = {
    "winter": ("make it look like winter", "turn it into a winter scene", "make it snowy", "it should be winter"),
    "night": ("make it night", "turn day into night", "make it look like it's nighttime",
              "make it dark like at night"),
    "sunset": ("make it sunset", "give it a warm sunset light", "change the lighting to golden hour"),
    "autumn": ("make it autumn", "make it look like fall", "turn it into an autumn scene"),
    "vintage": ("make it look vintage", "give it a sepia tone", "make it look like an old photograph"),
    "grayscale": ("make it black and white", "convert the image to grayscale", "make the photo black and white"),
    "painting": ("make it a watercolor painting", "make it look like an oil painting", "turn it into a painting"),
    "sketch": ("turn it into a pencil sketch", "make it a drawing", "make it look hand-drawn"),
    "cartoon": ("make it look like a cartoon", "turn it into a comic", "make it cartoonish"),
    "fog": ("make it foggy", "make it look misty", "cover the scene in fog"),
}
LOCATIONS = {
    ("top", "left"): ("in the top left corner", "at the top left", "in the upper left"),
    ("top", "center"): ("at the top", "near the top"),
    ("top", "right"): ("in the top right corner", "at the top right", "in the upper right"),
    ("middle", "left"): ("on the left", "on the left side", "to the left"),
    ("middle", "center"): ("in the middle", "in the center"),
    ("middle", "right"): ("on the right", "on the right side", "to the right"),
    ("bottom", "left"): ("in the bottom left corner", "at the bottom left", "in the lower left"),
    ("bottom", "center"): ("at the bottom", "near the bottom"),
    ("bottom", "right"): ("in the bottom right corner", "at the bottom right", "in the lower right"),
}


def pick(rng, options):
    return options[rng.integers(len(options))]


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def concept(rng, shape, colour, with_colour):
    """The phrase naming an object: "red ball", "ball", "sphere"..."""
    noun = pick(rng, NOUNS[shape])
    return f"{colour} {noun}" if with_colour else noun


def location(rng, center, size):
    """A phrase for where `center` (y, x) lies in the image, in thirds."""
    rows, cols = ("top", "middle", "bottom"), ("left", "center", "right")
    cell = (rows[min(int(3 * center[0] / size), 2)], cols[min(int(3 * center[1] / size), 2)])
    return pick(rng, LOCATIONS[cell])


def finish(rng, text):
    """Casing and punctuation vary across corpora and annotators."""
    if rng.random() < 0.08 and not text.endswith("?"):
        text = "please " + text
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.4 and not text.endswith("?"):
        text += "."
    return text


def fill(rng, templates, source=None, target=None, where=None):
    text = pick(rng, templates)
    where = f" {where}" if where and rng.random() < 0.75 else ""
    a = article(target) if target else ""
    return finish(rng, text.format(source=source, target=target, a=a, where=where))


def add_text(rng, target, where):
    return fill(rng, ADD, target=target, where=where)


def remove_text(rng, source, where):
    return fill(rng, REMOVE, source=source, where=where)


def replace_text(rng, source, target):
    return fill(rng, REPLACE, source=source, target=target)


def attribute_text(rng, source, attribute, is_colour):
    return fill(rng, RECOLOUR if is_colour else ATTRIBUTES[attribute], source=source, target=attribute)


def global_text(rng, style):
    return fill(rng, GLOBAL[style])

