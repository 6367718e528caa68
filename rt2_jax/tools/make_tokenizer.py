"""Train the shipped tiny sentencepiece model from a corpus generated here, deterministically.

    python -m rt2_jax.tools.make_tokenizer --out rt2_jax/assets/tiny_spm

writes `tiny_spm.model` and `tiny_spm.vocab` (piece, score, type per line; for reading only).
The corpus covers every word of the toy world (rt2_jax.sim.vocabulary), the prompt templates,
VQA questions and short answers, captions, chain-of-thought plans and action strings, plus a
little general robot-lab English. The same command gives the same bytes.

Model: BPE, 1024 ids = pad 0, EOS 1, unk 2 (no BOS), the numbers 0..255 as user-defined
pieces in their in-sentence form '▁0'..'▁255' (so '1 128 91 ...' is exactly one id per
number: the `integers` action mapping), 256 byte-fallback pieces (any text encodes) and 509
learned pieces (the pool for the `least_frequent` action mapping: ~420 are eligible, so on this
tiny vocabulary that mapping necessarily overwrites some real words; it is meant for large
vocabularies). BPE rather than unigram: on this small, repetitive corpus unigram splits the
template words ('▁wha' 't', '▁p' 'ick'), making robot prompts ~35% longer (up to 32 ids instead
of 23).
"""

from __future__ import annotations

import argparse
import io
import random
from collections.abc import Iterator
from pathlib import Path

import sentencepiece

from rt2_jax import tokenizer
from rt2_jax.sim import vocabulary

VOCAB_SIZE = 1024
MODEL_TYPE = "bpe"  # see the module docstring
NUM_ACTION_BINS = 256
SEED = 0
_SPACE = "\u2581"

GENERAL_TEXT = (
    "The robot arm moves over the table and stops above the object.",
    "A camera looks down at the table from above the robot.",
    "The gripper opens, moves down, closes and lifts the object.",
    "Each episode starts with a new scene and ends when the task is done.",
    "The instruction tells the robot which object to move and where.",
    "Objects on the table have a color, a shape and a position.",
    "Cards on the table show a number or a symbol.",
    "If the object is too far away, the robot first moves closer.",
    "The policy predicts an action at every step from the image and the instruction.",
    "A person watches the robot and counts the successful episodes.",
    "Sometimes the object slips out of the gripper and the robot tries again.",
    "The background of the scene can change between episodes.",
    "Questions about the image are answered with a short word.",
    "Vision language models learn from images paired with captions and questions.",
    "Web data teaches concepts that robot demonstrations rarely contain.",
    "Actions are written as text, eight integers separated by spaces.",
    "Operators collected demonstrations with a teleoperation device in an office kitchen.",
    "Training mixes robot trajectories with visual question answering examples.",
    "Generalization to unseen objects, backgrounds and environments is measured separately.",
    "Chain of thought reasoning lets the model describe a plan before it acts.",
    "Symbol understanding, reasoning and person recognition are emergent capabilities.",
    "Please wait while the controller executes the predicted displacement.",
    "Lighting, clutter and distractors make the evaluation harder.",
    "Quickly grab the yellow sponge, then squeeze it above the bowl.",
    "Joint velocity, torque limits and jerky motion were logged by the hardware.",
)

# Kitchen and office words (RT-1's world), so real instructions tokenize into sensible pieces.
OBJECTS = (
    "apple", "orange", "banana", "lemon", "coke can", "pepsi can", "water bottle", "sponge",
    "chip bag", "rxbar chocolate", "rxbar blueberry", "energy bar", "paper bowl", "cup", "mug",
    "plate", "spoon", "fork", "knife", "napkin", "towel", "jar", "box", "drawer", "cabinet",
    "counter", "sink", "fridge", "shelf", "basket", "tray", "pen", "marker", "book", "phone",
    "keyboard", "mouse", "stapler", "scissors", "tape", "toy", "dinosaur", "elephant", "bread",
    "cookie", "candy", "juice", "coffee", "tea", "milk", "cereal", "soda",
)
VERBS = (
    "pick", "place", "move", "push", "pull", "open", "close", "knock over", "put", "lift",
    "drop", "rotate", "turn", "slide", "stack", "sort", "wipe", "grasp", "release", "hold",
    "bring", "fetch", "take", "carry", "throw", "hand", "find", "point at", "touch", "reach",
)
ADJECTIVES = (
    "small", "large", "big", "tiny", "empty", "full", "round", "square", "flat", "tall",
    "short", "heavy", "light", "soft", "hard", "dark", "bright", "striped", "dotted", "clean",
    "dirty", "upright", "middle", "top", "bottom", "nearest", "farthest", "healthy", "sweet",
    "extinct", "famous", "different", "same", "similar",
)
PLACES = (
    "on the table", "into the drawer", "near the sink", "on the counter", "in the basket",
    "onto the tray", "next to the cup", "in the top drawer", "in the bottom drawer",
    "on the shelf", "between the apple and the cup", "in front of the robot", "behind the box",
    "upright", "to the edge of the table",
)
MORE_NUMBER_WORDS = (
    "ten", "eleven", "twelve", "first", "second", "third", "fourth", "last", "half", "double",
)
REASONS = (
    "I am hungry", "I am thirsty", "I need to clean up", "I want something sweet",
    "I need to write", "I am tired", "I want a healthy snack", "the table is messy",
    "I need caffeine", "it is time for breakfast",
)
# RT-2's emergent-skill probes: symbols, flags, arithmetic and other languages.
COUNTRIES = (
    "germany", "france", "japan", "brazil", "italy", "spain", "canada", "mexico", "india",
    "china", "kenya", "egypt", "sweden", "norway", "greece", "turkey", "chile", "peru",
    "australia", "argentina", "poland", "ireland", "portugal", "vietnam", "korea",
)
ANIMALS = (
    "dog", "cat", "horse", "tiger", "lion", "zebra", "giraffe", "monkey", "rabbit", "turtle",
    "snake", "eagle", "penguin", "dolphin", "whale", "octopus", "butterfly", "spider",
)
MULTILINGUAL = (
    "mueve la manzana a la taza", "recoge la lata roja", "pon el plátano en el cuenco",
    "déplace la banane vers le verre", "prends la pomme verte", "ouvre le tiroir du haut",
    "bewege den apfel zur tasse", "nimm die blaue flasche", "schließe die schublade",
    "sposta la mela vicino alla tazza", "pega a maçã vermelha", "coloque a garrafa na mesa",
)
MATH = (
    "the sum of two plus one", "the number of legs of a spider", "three minus two",
    "half of eight", "the square of two", "the answer to four times two minus five",
)

# Short answers per question type of vocabulary.VQA_TEMPLATES; `{...}` filled like questions.
VQA_ANSWERS = {
    "color": ("{color}",),
    "shape": ("{shape}", "{a_shape}", "{color} {shape}"),
    "exists": vocabulary.YES_NO,
    "count": ("{count}", "{count_word}"),
    "position": vocabulary.POSITIONS,
    "relation": ("left", "right", "to the left", "to the right", *vocabulary.YES_NO),
    "card": ("{symbol}", "{count_word}", "the number {digit}"),
    "background": ("{background}",),
}


def _with_article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _scene_fields(rng: random.Random) -> dict[str, str]:
    """Values for every placeholder of the toy world's question and caption templates."""
    colors = rng.sample(vocabulary.COLORS, 3)
    shapes = rng.sample(vocabulary.SHAPES, 3)
    objects = [f"{c} {s}" for c, s in zip(colors, shapes, strict=True)]
    listed = [_with_article(o) for o in objects[:rng.randrange(1, 4)]]
    symbols = rng.sample(vocabulary.CARD_SYMBOLS, 2)
    count = rng.randrange(len(vocabulary.NUMBER_WORDS))
    return dict(
        color=colors[0], shape=shapes[0], shapes=shapes[0] + "s", a_shape=_with_article(shapes[0]),
        obj=objects[0], obj2=objects[1], a_obj=_with_article(objects[0]),
        objects=", ".join(listed[:-1]) + " and " + listed[-1] if len(listed) > 1 else listed[0],
        cards=rng.choice((symbols[0], f"{symbols[0]} and {symbols[1]}")),
        side=rng.choice(("left", "right")), background=rng.choice(vocabulary.BACKGROUNDS),
        symbol=symbols[0], digit=str(rng.randrange(10)), count=str(count),
        count_word=vocabulary.NUMBER_WORDS[count],
    )


def _vqa_line(rng: random.Random) -> str:
    kind = rng.choice(sorted(vocabulary.VQA_TEMPLATES))
    fields = _scene_fields(rng)
    question = rng.choice(vocabulary.VQA_TEMPLATES[kind]).format(**fields)
    return tokenizer.vqa_prompt(question) + " " + rng.choice(VQA_ANSWERS[kind]).format(**fields)


def _caption_line(rng: random.Random) -> str:
    fields = _scene_fields(rng)
    caption = rng.choice(vocabulary.CAPTION_TEMPLATES).format(**fields)
    if rng.randrange(2):
        cards = (vocabulary.CAPTION_CARDS_TEMPLATES if " and " in fields["cards"]
                 else vocabulary.CAPTION_ONE_CARD_TEMPLATES)
        caption += rng.choice(cards).format(**fields)
    return tokenizer.caption_prompt() + " " + caption


NUMBER_WORDS_ALL = vocabulary.NUMBER_WORDS + MORE_NUMBER_WORDS


def _kitchen_line(rng: random.Random) -> str:
    obj, obj2 = rng.sample(OBJECTS, 2)
    verb, adjective = rng.choice(VERBS), rng.choice(ADJECTIVES)
    number = rng.choice(NUMBER_WORDS_ALL)
    kind = rng.randrange(7)
    if kind == 4:
        return tokenizer.robot_prompt(
            f"move the {obj} to the flag of {rng.choice(COUNTRIES)}")
    if kind == 5:
        return tokenizer.robot_prompt(
            f"{verb} the {obj} {rng.choice(('to', 'near'))} the {rng.choice(ANIMALS)}"
            if rng.randrange(2) else f"move the {obj} to {rng.choice(MATH)}")
    if kind == 6:
        return tokenizer.robot_prompt(rng.choice(MULTILINGUAL))
    if kind == 0:
        return tokenizer.robot_prompt(f"{verb} the {adjective} {obj} {rng.choice(PLACES)}")
    if kind == 1:
        return tokenizer.cot_target_text(f"{verb} {obj}", _action_text(rng)).replace(
            "Plan:", f"Instruction: {rng.choice(REASONS)}. Plan:")
    if kind == 2:
        return tokenizer.vqa_prompt(f"how many {obj}s are there?") + " " + number
    return f"the {adjective} {obj} is {rng.choice(PLACES)}, {number} {obj2}s too."


def _instruction(rng: random.Random) -> str:
    task = rng.choice(sorted(vocabulary.TASK_TEMPLATES))
    template = rng.choice(vocabulary.TASK_TEMPLATES[task])
    color, color2 = rng.sample(vocabulary.COLORS, 2)
    shape, shape2 = rng.sample(vocabulary.SHAPES, 2)
    return template.format(
        obj=f"{color} {shape}", target=f"{color2} {shape2}",
        direction=rng.choice(vocabulary.DIRECTIONS), symbol=rng.choice(vocabulary.CARD_SYMBOLS),
    )


def _action_text(rng: random.Random) -> str:
    values = [rng.randrange(2)] + [rng.randrange(NUM_ACTION_BINS) for _ in range(7)]
    return " ".join(str(value) for value in values)


def corpus(num_lines: int = 6000, seed: int = SEED) -> Iterator[str]:
    """The training sentences, in a fixed order for a given seed."""
    rng = random.Random(seed)
    yield from GENERAL_TEXT
    yield " ".join(str(number) for number in range(NUM_ACTION_BINS))
    for word_list in (OBJECTS, VERBS, ADJECTIVES, PLACES, MORE_NUMBER_WORDS, REASONS, COUNTRIES,
                      ANIMALS, MULTILINGUAL, MATH,
                      vocabulary.COLORS, vocabulary.SHAPES, vocabulary.BACKGROUNDS,
                      vocabulary.DIRECTIONS, vocabulary.CARD_SYMBOLS, vocabulary.POSITIONS,
                      vocabulary.NUMBER_WORDS):
        yield " ".join(word_list)
    yield tokenizer.caption_prompt()
    for _ in range(num_lines):
        kind = rng.randrange(8)
        if kind == 0:
            yield tokenizer.robot_prompt(_instruction(rng))
        elif kind == 1:
            yield _vqa_line(rng)
        elif kind == 2:
            yield _caption_line(rng)
        elif kind == 3:
            yield tokenizer.cot_target_text(_instruction(rng), _action_text(rng))
        elif kind == 4:
            yield _action_text(rng)
        elif kind == 5:
            yield rng.choice(GENERAL_TEXT)
        else:
            yield _kitchen_line(rng)


def train_model(vocab_size: int = VOCAB_SIZE, seed: int = SEED) -> bytes:
    """Serialized sentencepiece model trained on `corpus(seed=seed)`."""
    writer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=corpus(seed=seed),
        model_writer=writer,
        model_type=MODEL_TYPE,
        vocab_size=vocab_size,
        pad_id=tokenizer.PAD_ID,
        eos_id=tokenizer.EOS_ID,
        unk_id=2,
        bos_id=-1,
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=[f"{_SPACE}{number}" for number in range(NUM_ACTION_BINS)],
        num_threads=1,  # a fixed reduction order keeps the output byte-identical
        minloglevel=2,
    )
    return writer.getvalue()


def vocab_lines(model: bytes) -> list[str]:
    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    types = tokenizer.piece_types(model)
    return [
        f"{processor.id_to_piece(i)}\t{processor.get_score(i):.6g}\t{int(types[i])}"
        for i in range(processor.get_piece_size())
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True,
                        help="output prefix; writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab_size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    model = train_model(args.vocab_size, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".model").write_bytes(model)
    out.with_suffix(".vocab").write_text("\n".join(vocab_lines(model)) + "\n", encoding="utf-8")
    print(f"wrote {out.with_suffix('.model')} ({len(model)} bytes, {args.vocab_size} pieces)")


if __name__ == "__main__":
    main()
