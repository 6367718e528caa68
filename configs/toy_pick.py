"""The toy world's working policy: pick the named object among 3-5 (tiny model, 2 CPU cores).

The tiny model of configs/tiny.py with what made its policy act in closed loop (README, Status):
an action readout of prompt-conditioned spatial-softmax keypoints in the image tower, keypoint 0
taught where things are by the web data's pointing answers ("point to the purple star" -> "x y",
config.train.locate_weight), a 5x weight on the terminate token of the one "done" frame per
episode, and a gridded table with whole-step expert motions. Robot episodes are all of one task
kind (pick); the web data is the toy world's VQA with its pointing questions, which also show
the objects held out of the robot episodes.

RT-2's recipe in two stages, as the co-fine-tuning experiment runs it:

    python -m rt2_jax.experiments.cofinetune --config=configs/toy_pick.py --workdir=runs/pick \
        --arms=cofinetune --seeds=0 --pretrain_steps=1500 --finetune_steps=3000 \
        --robot_fraction=0.67

(web-only pretraining, then two thirds robot rows and one third web rows), or by hand with
rt2_jax.train: a first run with --config.data.sources.robot.weight=0 and export_at_end, then a
second with --config.train.init_from=<its export>.
"""

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.max_target_len = 12          # actions need 9 ids; VQA and pointing answers fit in 12
    vit = c.model.vit
    vit.posemb = "sincos2d"
    vit.keypoints = 16
    vit.keypoint_query = True              # keypoints follow the prompt ...
    vit.keypoint_query_attention = True    # ... through a learned weighting of its words
    vit.keypoint_action_head = True
    vit.keypoint_convs = ((32, 2), (32, 1), (64, 1))

    d = c.data
    d.global_batch_size = 48
    d.augment.enabled = False      # crops move every position an action is read from
    del d.sources["captions"]      # pointing and questions only: a third of each batch
    d.sources.robot.weight = 2 / 3
    d.sources.vqa.weight = 1 / 3
    # "point to the gripper" trains its text answer only; keypoint 0 learns the named things.
    d.sources.vqa.locate_exclude = "gripper"
    toy = d.toy_world
    toy.episodes = 2000
    toy.vqa_scenes = 4000
    toy.locate_per_scene = 3
    toy.tasks = ("pick",)
    toy.grid = 0.1
    toy.move_quantum = 0.1
    toy.pause_prob = 0.0

    t = c.train
    t.optimizer = "adamw"
    t.learning_rate = 1e-3
    t.warmup_steps = 100
    t.num_steps = 3000
    t.locate_weight = 1.0
    t.keypoint_action_weight = 1.0
    t.action_token_noise = 0.3
    t.terminate_weight = 5.0
    t.eval_every = 1000
    t.checkpoint_every = 500
    return c
