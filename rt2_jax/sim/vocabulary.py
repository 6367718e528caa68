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
