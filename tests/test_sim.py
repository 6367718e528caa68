"""The toy world: determinism, dynamics, rendering, the expert's success rate, VQA ground truth."""

import dataclasses
import subprocess
import sys

import gymnasium as gym
import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from rt2_jax import sim
from rt2_jax.sim import render, vocabulary, vqa, world


@pytest.fixture
def env():
    return sim.TabletopEnv()


def _noop(gripper=0.0, terminate=0.0, dx=0.0, dy=0.0, dz=0.0):
    return np.array([terminate, dx, dy, dz, 0, 0, 0, gripper], np.float32)


def test_same_seed_same_episode_different_seed_different():
    def run(seed):
        env = sim.TabletopEnv()
        expert = sim.ScriptedExpert(env, noise_std=0.01, pause_prob=0.1)
        return sim.rollout(env, expert, seed)

    a, b, c = run(7), run(7), run(8)
    assert a.task == b.task
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.task.instruction != c.task.instruction or not np.array_equal(a.images[0], c.images[0])


def test_expert_solves_99_percent_of_200_seeded_episodes():
    env = sim.TabletopEnv()
    expert = sim.ScriptedExpert(env, noise_std=0.005, pause_prob=0.05)
    results = [sim.rollout(env, expert, seed) for seed in range(200)]
    success = np.mean([r.success and r.terminated for r in results])
    assert success >= 0.99, f"expert success {success:.3f}"
    kinds = {r.task.kind for r in results}
    assert kinds == set(world.TASK_KINDS)
    for r in results:
        assert np.all(r.actions >= world.ACTION_LOW) and np.all(r.actions <= world.ACTION_HIGH)
        # terminate only on the final step, which is rewarded iff solved
        assert r.actions[-1, 0] == 1.0 and np.all(r.actions[:-1, 0] == 0.0)
        assert r.rewards[-1] == float(r.success) and np.all(r.rewards[:-1] == 0)
        assert r.images.shape[1:] == (128, 128, 3) and r.images.dtype == np.uint8


@pytest.mark.parametrize("kind", world.TASK_KINDS)
def test_each_task_kind_noise_free(kind):
    env = sim.TabletopEnv()
    expert = sim.ScriptedExpert(env)
    for seed in range(10):
        episode = sim.rollout(env, expert, seed, task=kind)
        assert episode.task.kind == kind and episode.success, (seed, episode.task)


def test_instructions_come_from_templates(env):
    for seed in range(40):
        _, info = env.reset(seed=seed)
        task = info["task"]
        fills = dict(obj=task.obj, target=task.target, direction=task.direction,
                     symbol=task.symbol)
        phrasings = {t.format(**fills) for t in vocabulary.TASK_TEMPLATES[task.kind]}
        assert task.instruction in phrasings


def test_reset_with_explicit_task(env):
    task = sim.Task(kind="place_on_card", obj="blue ball", symbol="3")
    obs, _ = env.reset(seed=3, options={"task": task})
    state = env.unwrapped.state
    assert "blue ball" in state.names and "3" in state.card_symbols
    assert "blue ball" in obs["instruction"] and "3" in obs["instruction"]
    obs, _ = env.reset(seed=3, options={"task": {"kind": "push", "obj": "red block",
                                                 "direction": "left"}})
    assert obs["instruction"] in {t.format(obj="red block", direction="left")
                                  for t in vocabulary.TASK_TEMPLATES["push"]}


@pytest.mark.parametrize("options, match", [
    ({"task": "juggle"}, "juggle"),
    ({"task": {"kind": "pick", "obj": "pink block"}}, "pink block"),
    ({"task": {"kind": "push", "obj": "red block"}}, "direction"),
    ({"tsk": "pick"}, "tsk"),
    ({"task": {"kind": "pick", "obj": "purple star"}}, "held out"),
])
def test_bad_reset_options_name_the_problem(env, options, match):
    with pytest.raises(ValueError, match=match):
        env.reset(seed=0, options=options)


def test_step_before_reset_and_after_end_raise(env):
    with pytest.raises(RuntimeError, match="reset"):
        env.step(_noop())
    env.reset(seed=0)
    _, reward, terminated, truncated, _ = env.step(_noop(terminate=1.0))
    assert terminated and not truncated and reward == 0.0
    with pytest.raises(RuntimeError, match="reset"):
        env.step(_noop())
    with pytest.raises(ValueError, match="8 finite"):
        env.reset(seed=0)
        env.step(np.zeros(7))


def test_truncation_at_max_episode_steps():
    env = sim.TabletopEnv(max_episode_steps=5)
    env.reset(seed=0)
    for t in range(5):
        _, _, terminated, truncated, _ = env.step(_noop())
        assert not terminated and truncated == (t == 4)


def test_actions_are_clipped_to_bounds(env):
    env.reset(seed=1)
    before = env.unwrapped.state.ee.copy()
    env.step(_noop(dx=5.0, dy=-5.0, dz=-5.0))
    after = env.unwrapped.state.ee
    np.testing.assert_allclose(after[:2] - before[:2], [world.MAX_STEP_XY, -world.MAX_STEP_XY],
                               atol=1e-9)
    assert after[2] == pytest.approx(before[2] - world.MAX_STEP_Z)


def test_grasp_lift_and_push_physics(env):
    env.reset(seed=0, options={"task": sim.Task(kind="pick", obj="red block")})
    state = env.unwrapped.state
    i = state.index_of("red block")
    state.ee[:] = [*state.obj_xy[i], 0.0]
    _, _, _, _, info = env.step(_noop(gripper=1.0))
    assert info["grasping"] and state.held == i and not info["success"]
    for _ in range(3):
        _, _, _, _, info = env.step(_noop(gripper=1.0, dz=0.1))
    assert state.obj_z[i] == pytest.approx(0.3) and info["success"]
    env.step(_noop(gripper=0.0))                       # opening drops it
    assert state.held == -1 and state.obj_z[i] == 0.0

    env.reset(seed=0, options={"task": sim.Task(kind="push", obj="red block",
                                                direction="right")})
    state = env.unwrapped.state
    i = state.index_of("red block")
    start = state.obj_xy[i].copy()
    state.ee[:] = [start[0] - world.PUSH_CONTACT - 0.02, start[1], 0.0]
    env.step(_noop(gripper=1.0))
    for _ in range(5):
        _, _, _, _, info = env.step(_noop(gripper=1.0, dx=0.04))
    assert state.obj_xy[i, 0] - start[0] > world.PUSH_DIST and info["success"]
    assert state.obj_xy[i, 1] == pytest.approx(start[1])


def test_rendering_shows_gripper_state_and_lift():
    rng = np.random.default_rng(0)
    state = world.build_scene(rng, ["red block"], [], "gray")
    state.ee[:] = [0.2, 0.2, 0.1]
    static = render.render_static(state)
    open_img = render.render_frame(static, state)
    state.gripper_closed = True
    closed_img = render.render_frame(static, state)
    assert not np.array_equal(open_img, closed_img)
    red = np.array(render.COLOR_RGB["red"])
    resting = np.all(render.render_frame(static, state) == red, axis=-1).sum()
    state.obj_z[0] = 0.3
    lifted = np.all(render.render_frame(static, state) == red, axis=-1).sum()
    assert lifted > 1.3 * resting
    # every card symbol renders as a distinct glyph
    glyphs = {symbol: render.glyph_alpha(symbol, 14) for symbol in vocabulary.CARD_SYMBOLS}
    flat = [g.round(2).tobytes() for g in glyphs.values()]
    assert len(set(flat)) == len(flat)


@pytest.mark.parametrize("ee", [(1.0, 0.0, 0.4), (0.0, 1.0, 0.4), (1.0, 1.0, 0.4), (0.0, 0.0, 0.0)])
def test_rendering_at_the_table_corners_at_any_height(ee):
    # A lifted gripper's shadow is drawn beside it and can fall wholly outside the image; that
    # once crashed the renderer (a negative-size window) in the middle of an evaluation.
    env = sim.TabletopEnv(camera="gripper")
    env.reset(seed=1, options={"task": "pick"})
    state = env.unwrapped.state
    state.ee[:] = ee
    i = 0
    state.held, state.gripper_closed = i, True
    state.obj_xy[i], state.obj_z[i] = np.clip(ee[:2], world.OBJECT_RADIUS,
                                              1 - world.OBJECT_RADIUS), ee[2]
    for image in (env.render(), env.render_table()):
        assert image.shape == (render.IMAGE_SIZE, render.IMAGE_SIZE, 3)


def _gripper_centroid(image):
    """Pixel (u, v) centre of the gripper's magenta body."""
    body = np.all(np.abs(image.astype(int) - render._GRIPPER_BODY) <= 40, axis=-1)
    assert body.sum() >= 3
    v, u = np.nonzero(body)
    return u.mean(), v.mean()


@pytest.mark.parametrize("xy", [(0.2, 0.3), (0.5, 0.5), (0.85, 0.1)])
def test_gripper_camera_rides_with_the_gripper_fixed_camera_does_not(xy):
    size = render.IMAGE_SIZE
    gripper_env = sim.TabletopEnv(camera="gripper")
    fixed_env = sim.TabletopEnv()                 # the default camera
    for e in (gripper_env, fixed_env):
        e.reset(seed=3, options={"task": "pick"})
        e.unwrapped.state.ee[:] = [*xy, 0.2]
    u, v = _gripper_centroid(gripper_env.render())
    assert abs(u - size / 2) < 2 and abs(v - size / 2) < 2       # always at the centre
    u, v = _gripper_centroid(fixed_env.render())
    assert abs(u - xy[0] * size) < 2 and abs(v - (1 - xy[1]) * size) < 2
    # Both show the same table: the fixed view is render_table(), the gripper view a re-centred,
    # half-scale copy of it with black beyond the table's edge.
    np.testing.assert_array_equal(fixed_env.render(), fixed_env.render_table())
    np.testing.assert_array_equal(gripper_env.render_table(), fixed_env.render_table())
    view = gripper_env.render()
    corner = (0, 0) if xy[0] > 0.5 else (0, size - 1)   # the far side is off the table
    assert view[corner].sum() == 0 or xy == (0.5, 0.5)
    with pytest.raises(ValueError, match="camera"):
        sim.TabletopEnv(camera="wrist")


def test_env_renders_the_smallest_size_and_refuses_smaller_ones_clearly():
    env = sim.TabletopEnv(image_size=render.MIN_IMAGE_SIZE)
    obs, _ = env.reset(seed=0, options={"task": "place_on_card"})   # cards on the table
    assert obs["image"].shape == (render.MIN_IMAGE_SIZE, render.MIN_IMAGE_SIZE, 3)
    for bad in (render.MIN_IMAGE_SIZE - 1, 32, 0, 64.0):
        with pytest.raises(ValueError, match="image_size must be an integer >= 40"):
            sim.TabletopEnv(image_size=bad)


def test_height_is_visible_as_the_grippers_shadow():
    # One frame must say how high the gripper is (descend, grasp and lift depend on it): its
    # shadow falls _SHADOW_SHIFT x height to the lower right, a few pixels per 0.1 at 64 px.
    size = 64
    state = world.build_scene(np.random.default_rng(0), ["red block"], [], "gray")
    state.obj_xy[0] = [0.15, 0.85]
    offsets = []
    for z in (0.1, 0.2, 0.3):
        state.ee = np.array([0.5, 0.5, z])
        image = render.render(state, size).astype(int)
        shade = image[size - 1, 0] * 0.4                  # the table under a 0.6 shadow
        v, u = np.nonzero(np.all(np.abs(image - shade) <= 6, axis=-1))
        offsets.append((u.mean() + 0.5 - size / 2, v.mean() + 0.5 - size / 2))
    for z, (du, dv) in zip((0.1, 0.2, 0.3), offsets, strict=True):
        expected = render._SHADOW_SHIFT * z * size
        assert abs(du - expected) < 1.5 and abs(dv - expected) < 1.5, (z, du, dv, expected)
    # A step of 0.1 in height moves the shadow by ~3 px along each axis: visible at 64 px.
    assert np.diff(np.array(offsets), axis=0).min() >= 2.5, offsets


def test_open_and_closed_gripper_differ_over_the_whole_body():
    state = world.build_scene(np.random.default_rng(0), ["red block"], [], "gray")
    state.obj_xy[0] = [0.15, 0.85]
    state.ee = np.array([0.5, 0.5, 0.1])
    counts = {}
    for closed in (False, True):
        state.gripper_closed = closed
        image = render.render(state, 64).astype(int)
        counts[closed] = [int(np.all(image == c, axis=-1).sum())
                          for c in (render._GRIPPER_BODY, render._GRIPPER_BODY_CLOSED)]
    assert counts[False][0] >= 8 and counts[True][0] == 0     # magenta only when open
    assert counts[True][1] >= counts[False][1] + 8             # closed: the body turns cyan


def test_expert_can_move_in_quanta_and_still_solves_its_tasks():
    env = sim.TabletopEnv()
    q = sim.expert.MAX_MOVE_QUANTUM
    episodes = [sim.rollout(env, sim.ScriptedExpert(env, noise_std=0.005, move_quantum=q), seed)
                for seed in range(60)]
    assert np.mean([e.success and e.terminated for e in episodes]) >= 0.97
    for e in episodes:
        moves = e.intended_actions[:, 1:4]
        np.testing.assert_allclose(moves / q, np.round(moves / q), atol=1e-4)
        assert set(np.unique(np.round(moves / q)).tolist()) <= {-1.0, 0.0, 1.0}   # whole steps
    exact = sim.rollout(env, sim.ScriptedExpert(env), 4)   # the default is exact motion
    assert not np.allclose(exact.intended_actions[:, 1:4] / q,
                           np.round(exact.intended_actions[:, 1:4] / q), atol=1e-4)
    with pytest.raises(ValueError, match="move_quantum"):
        sim.ScriptedExpert(env, move_quantum=0.15)


def test_grid_puts_objects_cards_and_the_gripper_start_on_its_multiples():
    """TabletopEnv(grid=0.1): every object, card and the gripper's start on multiples of 0.1, so
    with whole steps every offset from the gripper to an object is a whole number of steps; the
    whole-step expert still solves every task kind; grid=0 leaves the scenes as they were."""
    env, plain = sim.TabletopEnv(grid=0.1), sim.TabletopEnv()
    for seed in range(25):
        env.reset(seed=seed)
        s = env.unwrapped.state
        for xy in (s.obj_xy, s.card_xy.reshape(-1, 2), s.ee[None, :2]):
            np.testing.assert_allclose(xy / 0.1, np.round(xy / 0.1), atol=1e-9)
        assert np.all(s.obj_xy >= 0.1) and np.all(s.obj_xy <= 0.9)
        gaps = np.linalg.norm(s.obj_xy[:, None] - s.obj_xy[None], axis=-1)
        assert np.all(gaps[~np.eye(len(gaps), dtype=bool)] >= 2 * world.OBJECT_RADIUS)
    q = sim.expert.MAX_MOVE_QUANTUM
    for kind in world.TASK_KINDS:
        expert = sim.ScriptedExpert(env, noise_std=0.005, move_quantum=q)
        episodes = [sim.rollout(env, expert, seed, task=kind) for seed in range(10)]
        assert all(e.success and e.terminated for e in episodes), kind
    # grid=0 (the default) draws exactly the scenes it always did.
    again = sim.TabletopEnv(grid=0.0)
    again.reset(seed=7)
    plain.reset(seed=7)
    np.testing.assert_array_equal(again.unwrapped.state.obj_xy, plain.unwrapped.state.obj_xy)
    for bad in (-0.1, 0.3):
        with pytest.raises(ValueError, match="grid"):
            sim.TabletopEnv(grid=bad)


def test_card_half_sets_the_cards_size_where_they_are_drawn_placed_and_scored():
    """TabletopEnv(card_half=h): cards are squares of side 2h in the frame (their dark outline
    measured in pixels), far enough from objects and each other, a place counts within
    h - ON_CARD_MARGIN of the card's centre, and the whole-step expert solves place tasks;
    web scenes draw the same size; the default leaves the scenes as they were."""
    size = render.IMAGE_SIZE
    for h in (world.CARD_HALF, 0.11):
        env = sim.TabletopEnv(grid=0.1, card_half=h)
        env.reset(seed=4, options={"task": "place_on_card"})
        state = env.unwrapped.state
        assert state.card_half == h
        static = render.render_static(state, size)
        bare = render.render_static(dataclasses.replace(state, card_symbols=[],
                                                        card_xy=np.zeros((0, 2))), size)
        cx, _ = render._to_px(state.card_xy[0], size)
        row = int(render._to_px(state.card_xy[0], size)[1])
        changed = np.flatnonzero(np.any(static[row] != bare[row], axis=-1))
        changed = changed[np.abs(changed + 0.5 - cx) <= 2 * h * size]   # this card's row
        assert abs((changed.max() - changed.min() + 1) - 2 * h * size) <= 2, h
        for xy in state.card_xy:
            assert np.all(np.linalg.norm(state.obj_xy - xy, axis=-1)
                          >= h * 1.45 + world.OBJECT_RADIUS - 1e-9)
        # Success: the object resting within h - margin of the card's centre, per axis.
        i, card = state.index_of(env.unwrapped.task.obj), state.card_index(
            env.unwrapped.task.symbol)
        placed = dataclasses.replace(state, obj_xy=state.obj_xy.copy())
        placed.obj_xy[i] = state.card_xy[card] + [h - world.ON_CARD_MARGIN - 1e-6, 0.0]
        assert world.is_success(placed, env.unwrapped.task)
        placed.obj_xy[i] = state.card_xy[card] + [h - world.ON_CARD_MARGIN + 0.005, 0.0]
        assert not world.is_success(placed, env.unwrapped.task)
        expert = sim.ScriptedExpert(env, move_quantum=sim.expert.MAX_MOVE_QUANTUM)
        episodes = [sim.rollout(env, expert, seed, task="place_on_card") for seed in range(8)]
        assert all(e.success and e.terminated for e in episodes), h
        scene = vqa.sample_vqa_scene(np.random.default_rng(1), card_half=h)
        assert scene.card_half == h
    # The default draws exactly the scenes it always did.
    a, b = sim.TabletopEnv(), sim.TabletopEnv(card_half=world.CARD_HALF)
    a.reset(seed=9)
    b.reset(seed=9)
    np.testing.assert_array_equal(a.render(), b.render())
    for bad in (0.05, 0.2):
        with pytest.raises(ValueError, match="card_half"):
            sim.TabletopEnv(card_half=bad)


def test_expert_perturbations_are_whole_quanta_and_labels_stay_the_plan():
    """perturb_prob (DART): the executed dx, dy, dz differ from the plan's by one quantum on
    about that share of (dim, step) pairs, never by anything else; the expert still solves
    its pick tasks from the states this leads to."""
    env = sim.TabletopEnv()
    q = sim.expert.MAX_MOVE_QUANTUM
    expert = sim.ScriptedExpert(env, move_quantum=q, perturb_prob=0.3, seed=0)
    episodes = [sim.rollout(env, expert, seed, task="pick") for seed in range(20)]
    assert np.mean([e.success and e.terminated for e in episodes]) >= 0.95
    moving = [e.actions[:, 1:4] - e.intended_actions[:, 1:4] for e in episodes]
    off = np.concatenate([d for d in moving])
    # Executed motion is clipped to the action bounds, so an error can be cut to zero.
    assert set(np.unique(np.round(off / q)).tolist()) <= {-1.0, 0.0, 1.0}
    share = np.mean(np.abs(off) > q / 2)
    assert 0.15 <= share <= 0.3
    plans = np.concatenate([e.intended_actions[:, 1:4] for e in episodes])
    np.testing.assert_allclose(plans / q, np.round(plans / q), atol=1e-4)
    with pytest.raises(ValueError, match="perturb_prob"):
        sim.ScriptedExpert(env, perturb_prob=0.2)   # needs a move quantum (the error size)
    with pytest.raises(ValueError, match="perturb_prob"):
        sim.ScriptedExpert(env, move_quantum=q, perturb_prob=1.0)


def test_held_out_concepts():
    held = world.DEFAULT_HELD_OUT
    envs = {c: sim.TabletopEnv(concepts=c) for c in world.EVAL_CATEGORIES}
    unseen_alias = sim.TabletopEnv(concepts="unseen")
    kinds = set()
    for seed in range(100):
        for concepts, env in envs.items():
            _, info = env.reset(seed=seed)
            state, task = env.unwrapped.state, info["task"]
            distractors = set(state.names) - {task.obj}
            assert not distractors & set(held.objects), (concepts, seed)
            task_cards = {task.symbol} if concepts == "symbols" else set()
            assert not (set(state.card_symbols) - task_cards) & set(held.symbols), (concepts, seed)
            assert (task.obj in held.objects) == (concepts == "unseen_objects")
            assert (state.background in held.backgrounds) == (concepts == "unseen_backgrounds")
            if concepts == "symbols":
                assert task.kind == "place_on_card" and task.symbol in held.symbols
                assert task.symbol in task.instruction
            else:
                assert task.symbol not in held.symbols
                assert not any(h in task.instruction.split() for h in held.symbols)
            if concepts == "seen":
                kinds.add(task.kind)
        _, info = unseen_alias.reset(seed=seed)
        assert info["task"].obj in held.objects
    assert kinds == set(world.TASK_KINDS)
    with pytest.raises(ValueError, match="concepts"):
        sim.TabletopEnv(concepts="novel")
    with pytest.raises(ValueError, match="pink"):
        world.HeldOut(objects=("pink star",))
    with pytest.raises(ValueError, match="symbol 'sun'"):
        world.HeldOut(symbols=("sun",))
    with pytest.raises(ValueError, match="held-out symbols"):
        sim.TabletopEnv(concepts="symbols", held_out=world.HeldOut(symbols=()))
    with pytest.raises(ValueError, match="held out"):
        world.sample_episode(np.random.default_rng(0), world.Task(
            kind="place_on_card", obj="red block", symbol=held.symbols[0]))


def test_expert_solves_every_category():
    for concepts in world.EVAL_CATEGORIES:
        env = sim.TabletopEnv(concepts=concepts)
        expert = sim.ScriptedExpert(env)
        results = [sim.rollout(env, expert, seed) for seed in range(40)]
        assert np.mean([r.success and r.terminated for r in results]) >= 0.99, concepts


def test_intended_actions_are_the_noise_free_plan():
    env = sim.TabletopEnv()
    noisy = sim.rollout(env, sim.ScriptedExpert(env, noise_std=0.01, pause_prob=0.2), seed=5)
    assert noisy.intended_actions.shape == noisy.actions.shape
    moved = noisy.actions[:, 1:4]
    planned = noisy.intended_actions[:, 1:4]
    paused = np.all(moved == 0, axis=1) & np.any(planned != 0, axis=1)
    assert paused.any()   # a pause executes nothing but keeps the plan's label
    diff = (moved - planned)[~paused & (noisy.actions[:, 0] == 0)]
    assert 0 < np.abs(diff).max() < 0.06   # noise only, never a different plan
    np.testing.assert_array_equal(noisy.intended_actions[:, 0], noisy.actions[:, 0])
    clean = sim.rollout(env, sim.ScriptedExpert(env), seed=5)   # no noise: labels == actions
    np.testing.assert_array_equal(clean.intended_actions, clean.actions)


def test_rollout_records_where_the_gripper_and_objects_were_before_each_action():
    env = sim.TabletopEnv()
    ep = sim.rollout(env, sim.ScriptedExpert(env), seed=3, task="pick")
    steps, objects = len(ep.images), len(ep.objects)
    assert ep.ee.shape == (steps, 3) and ep.obj_xy.shape == (steps, objects, 2)
    env.reset(seed=3, options={"task": "pick"})
    start = env.unwrapped.state
    np.testing.assert_allclose(ep.ee[0], start.ee, atol=1e-6)
    np.testing.assert_allclose(ep.obj_xy[0], start.obj_xy, atol=1e-6)
    # Frame t was taken before action t: the executed motion is the next frame's offset.
    np.testing.assert_allclose(ep.ee[1:] - ep.ee[:-1], ep.actions[:-1, 1:4], atol=1e-5)
    # Once lifted, the picked object rides with the gripper.
    k = ep.objects.index(ep.task.obj)
    lifted = ep.ee[:, 2] > 0.05
    held = np.flatnonzero(lifted & (np.linalg.norm(ep.obj_xy[:, k] - ep.ee[:, :2], axis=1) < 1e-3))
    assert ep.success and held.size > 0


def test_pick_says_done_at_the_ceiling_where_lifting_more_changes_nothing():
    # A policy that misses the expert's one "done" frame keeps lifting. The pick demonstration
    # ends at the top of the workspace, so that lift is clipped and the policy sees again the
    # very frame the expert terminated on, instead of heights no demonstration shows.
    for seed in range(5):
        env = sim.TabletopEnv()
        ep = sim.rollout(env, sim.ScriptedExpert(env, move_quantum=0.1), seed=seed, task="pick")
        assert ep.success and ep.actions[-1, 0] == 1.0
        assert ep.ee[-1, 2] == pytest.approx(world.Z_MAX)
        # The done frame is the only one at the ceiling.
        assert np.sum(ep.ee[:, 2] >= world.Z_MAX - 1e-6) == 1
        # Replay the (noise-free) episode up to the done frame, then lift once more.
        env.reset(seed=seed, options={"task": "pick"})
        for action in ep.actions[:-1]:
            env.step(action)
        obs, *_ = env.step(_noop(gripper=1.0, dz=world.ACTION_HIGH[3]))
        np.testing.assert_array_equal(obs["image"], ep.images[-1])
        assert env.unwrapped.state.ee[2] == pytest.approx(world.Z_MAX)


def test_retreat_z_ends_a_place_at_the_ceiling_the_default_where_it_always_did():
    # retreat_z=Z_MAX: after the release the open gripper rises to the top, and that "done"
    # frame is the only one in the episode with an open gripper above the start height (every
    # approach to an object shows an open gripper at the hover height, as the default's last
    # frame does). Success and everything before the release are unchanged.
    for quantum in (0.0, 0.1):
        for seed in range(4):
            env = sim.TabletopEnv(grid=0.1 if quantum else 0.0)
            high = sim.rollout(env, sim.ScriptedExpert(env, move_quantum=quantum,
                                                       retreat_z=world.Z_MAX),
                               seed=seed, task="place_on_card")
            low = sim.rollout(env, sim.ScriptedExpert(env, move_quantum=quantum),
                              seed=seed, task="place_on_card")
            assert high.success and high.terminated and high.actions[-1, 0] == 1.0
            assert low.success and low.terminated and low.actions[-1, 0] == 1.0
            assert high.ee[-1, 2] == pytest.approx(world.Z_MAX, abs=1e-6)
            assert low.ee[-1, 2] == pytest.approx(sim.expert.HOVER_Z, abs=0.02)
            opened = high.actions[:, 7] < 0.5
            assert np.flatnonzero(opened & (high.ee[:, 2] > world.START_Z + 1e-6)).max() == \
                len(high.ee) - 1
            assert np.sum(opened & (high.ee[:, 2] >= world.Z_MAX - 1e-6)) == 1
            # The two agree up to the retreat: same frames, same actions.
            grasp = int(np.flatnonzero(low.actions[:, 7] > 0.5).min())
            release = grasp + int(np.flatnonzero(low.actions[grasp:, 7] < 0.5).min())
            np.testing.assert_array_equal(low.images[:release + 1], high.images[:release + 1])
            np.testing.assert_array_equal(low.actions[:release + 1], high.actions[:release + 1])
    with pytest.raises(ValueError, match="retreat_z must be in"):
        sim.ScriptedExpert(sim.TabletopEnv(), retreat_z=world.Z_MAX + 0.1)
    with pytest.raises(ValueError, match="retreat_z must be in"):
        sim.ScriptedExpert(sim.TabletopEnv(), retreat_z=0.05)


def test_release_z_drops_the_object_where_it_was_carried():
    # release_z=CARRY_Z: no lowering; the gripper opens over the card at the carry height, the
    # object falls onto the card (a success as before), and from then on the open gripper is
    # higher than it ever is before the grasp. Move near releases there too.
    for task in ("place_on_card", "move_near"):
        for seed in range(4):
            env = sim.TabletopEnv(grid=0.1)
            expert = sim.ScriptedExpert(env, move_quantum=0.1, release_z=sim.expert.CARRY_Z,
                                        retreat_z=world.Z_MAX)
            ep = sim.rollout(env, expert, seed=seed, task=task)
            assert ep.success and ep.terminated, (task, seed)
            grasp = int(np.flatnonzero(ep.actions[:, 7] > 0.5).min())
            release = grasp + int(np.flatnonzero(ep.actions[grasp:, 7] < 0.5).min())
            assert ep.ee[release, 2] == pytest.approx(sim.expert.CARRY_Z, abs=1e-6)
            assert ep.actions[release, 3] == 0.0   # opens without moving down
            assert ep.ee[release + 1:, 2].min() > ep.ee[:grasp, 2].max() + 0.05
            i = env.unwrapped.state.index_of(ep.task.obj)
            assert env.unwrapped.state.obj_z[i] == 0.0   # it fell onto the table
    with pytest.raises(ValueError, match="release_z must be in"):
        sim.ScriptedExpert(sim.TabletopEnv(), release_z=0.35)
    with pytest.raises(ValueError, match="retreat_z must be in"):   # would go down again
        sim.ScriptedExpert(sim.TabletopEnv(), release_z=0.3, retreat_z=0.2)


def test_slips_and_terminate_holds_keep_labels_right_and_the_expert_successful():
    env = sim.TabletopEnv()
    expert = sim.ScriptedExpert(env, noise_std=0.01, pause_prob=0.05, gripper_flip_prob=0.05,
                                terminate_repeats=3)
    episodes = [sim.rollout(env, expert, seed) for seed in range(60)]
    assert np.mean([e.success and e.terminated for e in episodes]) >= 0.97
    slips = 0
    for e in episodes:
        if not (e.success and e.terminated):
            continue
        # Executed: terminate only at the end. Labels: the last 4 frames (all solved) say done.
        assert e.actions[-1, 0] == 1 and np.all(e.actions[:-1, 0] == 0)
        np.testing.assert_array_equal(e.intended_actions[:, 0],
                                      [0] * (len(e.actions) - 4) + [1] * 4)
        moving = e.intended_actions[:, 0] == 0
        slips += int(np.sum(e.actions[moving, 7] != e.intended_actions[moving, 7]))
    assert slips > 10   # slips happened and the labels kept the plan's gripper command
    with pytest.raises(ValueError, match="gripper_flip_prob"):
        sim.ScriptedExpert(env, gripper_flip_prob=1.0)
    with pytest.raises(ValueError, match="terminate_repeats"):
        sim.ScriptedExpert(env, terminate_repeats=-1)


def test_gymnasium_registration_and_checker():
    from gymnasium.utils.env_checker import check_env

    env = gym.make(sim.ENV_ID)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    check_env(sim.TabletopEnv(), skip_render_check=True)


def test_vqa_answers_match_scene():
    rng = np.random.default_rng(0)
    state = world.build_scene(rng, ["red block", "blue ball", "red star"], ["4"], "wood")
    state.obj_xy[:] = [[0.2, 0.8], [0.8, 0.2], [0.5, 0.5]]
    questions = vqa.candidate_questions(state, rng, focus="blue ball")
    by_type = {qa.question_type: qa for qa in questions}
    assert by_type["exists"].answers == ("yes",)
    assert by_type["position"].answers == ("bottom right",)
    assert by_type["background"].answers[0] == "wood"
    assert by_type["card"].answers[0] == "4" and "four" in by_type["card"].answers
    assert by_type["shape"].answers[0] == "ball"            # the only unique color is blue
    color_qa = by_type["color"]
    shape = next(s for s in ("block", "ball", "star") if s in color_qa.question)
    assert color_qa.answers == ({"block": "red", "ball": "blue", "star": "red"}[shape],)
    for _ in range(20):
        qa = vqa._relation_question(state, rng)
        a, b = (state.index_of(n) for n in state.names if n in qa.question)
        i, j = sorted((a, b), key=lambda k: qa.question.index(state.names[k]))
        left = state.obj_xy[i, 0] < state.obj_xy[j, 0]
        if "left or" in qa.question:
            assert qa.answers[0] == ("left" if left else "right")
        elif "left of" in qa.question:
            assert qa.answers == (("yes",) if left else ("no",))
        else:
            assert qa.answers == (("no",) if left else ("yes",))
    caption = vqa.caption(state, rng)
    assert caption.index("red block") < caption.index("red star") < caption.index("blue ball")
    assert "wood" in caption and "4" in caption


def test_sim_imports_no_tensorflow_or_jax():
    code = ("import sys, rt2_jax.sim; "
            "bad = [m for m in ('tensorflow', 'jax', 'flax') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(x=st.floats(0, 1), y=st.floats(0, 1))
def test_location_answer_round_trip(x, y):
    text = vqa.location_answer([x, y])
    col, row = (int(v) for v in text.split())
    assert 0 <= col < vqa.LOCATION_BINS and 0 <= row < vqa.LOCATION_BINS
    point = vqa.parse_location(text)
    assert np.all(np.abs(point - [x, y]) <= 1 / vqa.LOCATION_BINS)   # within one cell
    assert vqa.location_correct(text, text)


@hypothesis.given(st.text(max_size=12))
def test_parse_location_never_raises(text):
    point = vqa.parse_location(text)
    assert point is None or (point.shape == (2,) and np.all((point > 0) & (point < 1)))


def test_location_scoring():
    assert vqa.location_answer([0.0, 1.0]) == "0 0"        # top left of the image
    assert vqa.location_answer([1.0, 0.0]) == "255 255"    # bottom right
    assert vqa.location_correct("130 128", "128 128")
    assert not vqa.location_correct("160 128", "128 128")  # 32 cells = 0.125 > tolerance
    for bad in ("", "128", "128 128 5", "a b", "-1 5", "256 3", "12.5 3"):
        assert vqa.parse_location(bad) is None
        assert not vqa.location_correct(bad, "128 128")
    with pytest.raises(ValueError, match="reference location"):
        vqa.location_correct("1 2", "left")


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=3))
def test_multi_point_answers_round_trip(points):
    text = vqa.location_answer(*points)
    assert len(text.split()) == 2 * len(points)
    parsed = vqa.parse_locations(text)
    assert parsed.shape == (len(points), 2)
    assert np.all(np.abs(parsed - np.array(points)) <= 1 / vqa.LOCATION_BINS)
    assert vqa.location_correct(text, text)
    assert (vqa.parse_location(text) is None) == (len(points) != 1)


def test_two_point_scoring_needs_both_points_in_order():
    answer = "40 40 200 200"
    assert vqa.location_correct("42 40 200 198", answer)
    assert not vqa.location_correct("200 200 40 40", answer)     # swapped: the order counts
    assert not vqa.location_correct("42 40 120 200", answer)     # second point off
    assert not vqa.location_correct("42 40", answer)             # one point of two
    assert not vqa.location_correct("40 40 200 200 1 1", answer)
    assert not vqa.location_correct("40 40 200", answer)
    with pytest.raises(ValueError):
        vqa.location_answer()


def test_pair_questions_point_at_the_object_then_the_card():
    rng = np.random.default_rng(0)
    held = world.DEFAULT_HELD_OUT
    asked = asked_held = asked_seen = 0
    for _ in range(60):
        state = vqa.sample_vqa_scene(rng)
        before = rng.bit_generator.state
        assert vqa.locate_pair_questions(state, rng, 0) == []
        assert rng.bit_generator.state == before     # n = 0 draws nothing: old data unchanged
        qas = vqa.locate_pair_questions(state, rng, 2)
        if not state.card_symbols:
            assert qas == []
            continue
        assert 1 <= len(qas) <= 2 and len({qa.question for qa in qas}) == len(qas)
        for qa in qas:
            asked += 1
            assert qa.question_type == "locate_pair"
            objects = [k for k, name in enumerate(state.names) if f"the {name} " in qa.question]
            cards = [k for k, sym in enumerate(state.card_symbols)
                     if f"showing {sym}" in qa.question or f"the {sym} card" in qa.question]
            assert len(objects) == 1 and len(cards) == 1, qa.question
            assert qa.answers[0] == vqa.location_answer(state.obj_xy[objects[0]],
                                                        state.card_xy[cards[0]])
            is_held = state.card_symbols[cards[0]] in held.symbols
            asked_held += is_held
            asked_seen += not is_held
    # drawn uniformly: held-out symbol cards (shown in web scenes) and seen ones both asked
    assert asked >= 20 and asked_held > 0 and asked_seen > asked_held


def test_cover_prob_puts_an_object_over_a_card_and_pair_questions_ask_that_pair_first():
    """sample_vqa_scene(cover_prob=1): every scene with a card has an object over one, resting
    under the open gripper or held by the closed gripper at a place's heights; it overlaps no
    other object, hides part of the card in the rendered image, and the scene's first pair
    question names it with its card. cover_prob=0 draws the scenes it always did."""
    resting = held = 0
    for seed in range(60):
        plain = vqa.sample_vqa_scene(np.random.default_rng(seed), card_half=0.11)
        same = vqa.sample_vqa_scene(np.random.default_rng(seed), card_half=0.11, cover_prob=0.0)
        np.testing.assert_array_equal(plain.obj_xy, same.obj_xy)
        np.testing.assert_array_equal(plain.ee, same.ee)
        rng = np.random.default_rng(seed)
        state = vqa.sample_vqa_scene(rng, card_half=0.11, cover_prob=1.0)
        pairs = vqa.covering_pairs(state)
        if not state.card_symbols:
            assert pairs == [] and state.held == -1
            continue
        assert len(pairs) == 1
        k, c = pairs[0]
        np.testing.assert_allclose(state.ee[:2], state.obj_xy[k])
        if state.held == k:
            held += 1
            assert state.gripper_closed and state.obj_z[k] == state.ee[2]
            assert 0.06 <= state.ee[2] <= 0.3
        else:
            resting += 1
            assert state.held == -1 and not state.gripper_closed and state.obj_z[k] == 0.0
        gaps = np.linalg.norm(state.obj_xy[:, None] - state.obj_xy[None], axis=-1)
        assert np.all(gaps[~np.eye(len(gaps), dtype=bool)] >= 2 * world.OBJECT_RADIUS)
        # The card is partly hidden: some of its pixels differ from the bare table-and-cards.
        size = render.IMAGE_SIZE
        image, static = render.render(state, size), render.render_static(state, size)
        cx, cy = render._to_px(state.card_xy[c], size)
        half = int(0.11 * size) - 1
        window = (slice(int(cy) - half, int(cy) + half), slice(int(cx) - half, int(cx) + half))
        hidden = np.any(image[window] != static[window], axis=-1).mean()
        assert 0.1 < hidden < 0.9, hidden
        qas = vqa.locate_pair_questions(state, rng, 2)
        assert qas[0].answers[0] == vqa.location_answer(state.obj_xy[k], state.card_xy[c])
    assert resting >= 5 and held >= 5
    with pytest.raises(ValueError, match="cover_prob"):
        vqa.sample_vqa_scene(np.random.default_rng(0), cover_prob=1.5)


def test_locate_questions_point_at_their_subject():
    rng = np.random.default_rng(0)
    held = world.DEFAULT_HELD_OUT
    asked_held = asked_gripper = 0
    for _ in range(50):
        state = vqa.sample_vqa_scene(rng)
        qas = vqa.locate_questions(state, rng, 2)
        assert len(qas) == 2 and len({qa.question for qa in qas}) == 2
        for qa in qas:
            assert qa.question_type == "locate"
            words = qa.question.rstrip("?").split()
            named = [xy for k, xy in enumerate(state.obj_xy)
                     if " ".join(words[-2:]) == state.names[k]]
            named += [xy for k, xy in enumerate(state.card_xy)
                      if state.card_symbols[k] in words]
            if words[-1] == "gripper":
                named.append(state.ee[:2])
                asked_gripper += 1
            assert len(named) == 1, qa.question
            assert qa.answers[0] == vqa.location_answer(named[0])
        present = set(state.names) & set(held.objects)
        if present:   # a held-out object present is always among the first asked
            asked_held += any(p in qa.question for qa in qas for p in present)
    assert asked_held > 0 and asked_gripper > 0
