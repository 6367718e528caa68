"""Two task kinds, pick and place_on_card, with web data that grounds both things a place names.

configs/toy_pick.py's recipe (tiny model, prompt-conditioned keypoints, keypoint 0 taught by the
web data's pointing answers) with robot episodes that alternate between "pick up the X" and
"place the X on the card showing N". A place instruction names two things, and where the card is
must come from somewhere: no robot frame carries a position. The web data adds object-and-card
pointing questions ("point to the X and the card showing N" -> "x1 y1 x2 y2",
data.toy_world.locate_pairs_per_scene) whose second point trains keypoint 1
(train.locate_points=2), as PaLI-X's detection answers list several boxes. The held-out card
symbols (7, moon) appear in those questions and never in a robot episode: the `symbols`
category of rt2_jax.tools.eval_sim.

    python -m rt2_jax.train --config=configs/toy_place.py --workdir=runs/place \\
        --config.train.init_from=rt2_jax/assets/toy_pick_web

co-fine-tunes the shipped web-pretrained weights (README, the co-fine-tuning experiment).
"""

from configs import toy_pick


def get_config():
    c = toy_pick.get_config()
    c.data.toy_world.tasks = ("pick", "place_on_card")
    c.data.toy_world.locate_pairs_per_scene = 2
    c.train.locate_points = 2
    return c
