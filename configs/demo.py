"""`make demo`'s policy: co-fine-tune a shipped web-pretrained toy VLM on pick episodes.

RT-2 does not train a policy from random weights: it co-fine-tunes a VLM that web data has
already taught what and where things are. The demo does the same at toy scale. Its starting
point, `rt2_jax/assets/toy_pick_web` (an export, 1.1M parameters in bfloat16), is
configs/toy_pick.py's model after 1,500 steps on the toy world's web data alone (VQA and
pointing questions; no robot frame), made with

    python -m rt2_jax.train --config=configs/demo.py:pretrain --workdir=runs/demo_pretrain
    python -m rt2_jax.export --workdir=runs/demo_pretrain --out=rt2_jax/assets/toy_pick_web

(~11 minutes on 2 CPU cores; the variant is the `pretrain` stage of python -m
rt2_jax.experiments.cofinetune --config=configs/toy_pick.py --pretrain_steps=1500). The demo itself
(`get_config()`) generates toy_pick's data (2,000 pick episodes, 4,000 web scenes; the
pretraining saw the web scenes, never a robot frame) and co-fine-tunes those weights for 1,500
steps of 32 rows, four fifths robot and one fifth web, the learning rate annealed to 0 at the
end: about 7 minutes on 2 cores. From random weights the same budget does
not make a policy that acts (README, Quickstart).
"""

import os

import rt2_jax
from configs import toy_pick

# The shipped web-pretrained weights (an export directory; `python -m rt2_jax.export`).
PRETRAINED = os.path.join(os.path.dirname(os.path.abspath(rt2_jax.__file__)), "assets",
                          "toy_pick_web")


def get_config(variant: str = ""):
    """'' = the demo's co-fine-tuning; 'pretrain' = the web-only run that made PRETRAINED."""
    c = toy_pick.get_config()
    if variant == "pretrain":
        # Exactly the experiment's web-only stage (robot source kept at weight 0, so the action
        # bounds are the demo's; two held-out evaluations; an export at the end).
        from rt2_jax.experiments import cofinetune
        return cofinetune.stage_config(c, "pretrain", seed=0, steps=1500)
    if variant:
        raise ValueError(f"configs/demo.py takes no argument (the demo) or ':pretrain' (the "
                         f"web-only run that made its starting weights); got {variant!r}")
    c.train.init_from = PRETRAINED
    c.data.global_batch_size = 32
    # Four of five rows robot: more robot examples in the demo's few steps (two thirds solved
    # 28 and 18 of 100 for seeds 0, 1; README, Quickstart); one web row in five keeps the
    # pointing answers that ground keypoint 0, and the VQA near the pretrained model's.
    c.data.sources.robot.weight = 0.8
    c.data.sources.vqa.weight = 0.2
    c.train.num_steps = 1500
    c.train.eval_every = 1500       # one held-out evaluation, at the end
    c.train.checkpoint_every = 500
    c.train.export_at_end = True
    return c
