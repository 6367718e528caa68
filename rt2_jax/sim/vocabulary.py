"""The toy tabletop world's words: object colors and shapes, backgrounds, and task phrasings.

One source of truth shared by the simulator, the dataset builders and the script that trains the
shipped sentencepiece model, so that every word the world can say is in the tiny vocabulary.
"""

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("block", "ball", "triangle", "ring", "star", "cylinder")
BACKGROUNDS = ("wood", "gray", "white", "checker", "marble", "green")
DIRECTIONS = ("left", "right", "up", "down")
CARD_SYMBOLS = (*(str(n) for n in range(10)), "heart", "square", "cross", "moon")

# Phrasings per task; `{obj}`, `{target}`, `{direction}` and `{symbol}` are filled in by the world.
TASK_TEMPLATES = {
    "pick": (
        "pick up the {obj}",
        "pick the {obj}",
        "grab the {obj}",
        "lift the {obj}",
    ),
    "move_near": (
        "move the {obj} near the {target}",
        "move the {obj} next to the {target}",
        "put the {obj} close to the {target}",
        "bring the {obj} to the {target}",
    ),
    "push": (
        "push the {obj} {direction}",
        "slide the {obj} {direction}",
        "nudge the {obj} to the {direction}",
    ),
    "place_on_card": (
        "place the {obj} on the card with the number {symbol}",
        "put the {obj} on the card showing {symbol}",
        "move the {obj} onto the {symbol} card",
    ),
}

# ---- words and phrasings of the VQA and caption data (added; nothing above is changed) ----

# Coarse image regions, answers to "where is the ...?" (image thirds: row word, then column word).
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
YES_NO = ("yes", "no")

# Questions per type; `{obj}`/`{obj2}` are object names ("red block"), `{a_obj}` one with its
# article ("an orange ring"), `{color}`, `{shape}`,
# `{shapes}` (plural), `{side}` ("left"/"right") are filled in by rt2_jax.sim.vqa.
VQA_TEMPLATES = {
    "color": ("what color is the {shape}?", "which color does the {shape} have?"),
    "shape": ("what shape is the {color} object?", "what is the {color} object?"),
    "exists": ("is there {a_obj} on the table?", "do you see {a_obj}?"),
    "count": (
        "how many objects are on the table?",
        "how many {shapes} are there?",
        "how many {color} objects are there?",
        "how many cards are there?",
    ),
    "position": ("where is the {obj}?", "in which part of the image is the {obj}?"),
    "relation": (
        "is the {obj} left of the {obj2}?",
        "is the {obj} right of the {obj2}?",
        "is the {obj} to the left or to the right of the {obj2}?",
    ),
    "card": (
        "what does the card show?",
        "what number is on the card?",
        "what does the card on the {side} show?",
    ),
    "background": ("what is the background?", "what kind of table is this?"),
}

# `{objects}` is a list like "a red block, a blue ball and a green star"; `{cards}` lists symbols.
CAPTION_TEMPLATES = (
    "{objects} on a {background} table.",
    "a {background} table with {objects}.",
    "a robot gripper above {objects} on a {background} table.",
)
CAPTION_ONE_CARD_TEMPLATES = (" there is a card showing {cards}.", " a card shows {cards}.")
CAPTION_CARDS_TEMPLATES = (" the cards show {cards}.", " there are cards showing {cards}.")

# Pointing questions (PaLI-style localization as text): the answer is a point, "x y", two
# integers 0..255 on a 256 x 256 grid over the image (x from the left, y from the top). They
# use words the shipped tokenizer already has, so they are kept out of VQA_TEMPLATES (whose
# phrasings train that tokenizer) to leave it unchanged.
LOCATE_TEMPLATES = {
    "object": ("point to the {obj}", "where exactly is the {obj}?"),
    "card": ("point to the card showing {symbol}", "where exactly is the {symbol} card?"),
    "gripper": ("point to the gripper", "where exactly is the gripper?"),
}
# Two things in one question, an object and then a card (detection-style: one point per named
# thing, in the order named). A place_on_card instruction names the same two.
LOCATE_PAIR_TEMPLATES = ("point to the {obj} and the card showing {symbol}",
                         "where exactly are the {obj} and the {symbol} card?")
