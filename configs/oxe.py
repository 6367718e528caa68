"""RT-2 on Open X-Embodiment robot datasets, optionally co-fine-tuned with web data.

The argument names each dataset's RLDS version directory (local or gs://), comma-separated:

    python -m rt2_jax.train --workdir=... --config=configs/oxe.py:\
fractal20220817_data=gs://b/fractal20220817_data/0.1.0,taco_play=gs://b/taco_play/0.1.0,\
vqa=gs://b/vqa/1.0.0

- Robot datasets: the names in `data_pipelines.config.OXE_DATASETS` (fractal20220817_data,
  bridge, taco_play, berkeley_autolab_ur5), each read through its shipped mapping and binned
  with its own action bounds. Weights are Octo's OXE weights times each dataset's number of
  steps (`config.data.weight_robots_by_size`).
- Web data (optional): `vqa=DIR` (VQAv2 from TFDS, mapping `vqav2`) and `captions=DIR` (COCO
  captions, mapping `coco_captions`). With web data the robot datasets together get half of
  each batch (RT-2-PaLI-X's ≈50%), the web sources share the rest.
- `model=palix_5b` (default), `palix_55b` or `tiny` (a CPU-sized check of the data and the
  training loop; it keeps tiny's 64 px images and small vocabulary).

The wrist camera of taco_play (`rgb_gripper`) and berkeley_autolab_ur5 (`hand_image`) is read
only with `--config.model.wrist_camera=tokens` (or `side_by_side`); it is off here, as in RT-2.
Override any field as usual, e.g. `--config.data.sources.taco_play.weight=0.5`.
"""

from configs import palix_5b, palix_55b, tiny
from data_pipelines import config as data_config

MODELS = {"palix_5b": palix_5b.get_config, "palix_55b": palix_55b.get_config,
          "tiny": tiny.get_config}
WEB = {"vqa": dict(kind="vqa", mapping="vqav2"),
       "captions": dict(kind="caption", mapping="coco_captions")}


def get_config(datasets: str = ""):
    entries = data_config.parse_builder_dirs(datasets)
    model = entries.pop("model", "palix_5b")
    if model not in MODELS:
        raise ValueError(f"configs/oxe.py: model={model!r}; choose one of {sorted(MODELS)}.")
    web = {name: entries.pop(name) for name in list(entries) if name in WEB}
    if not entries:
        raise ValueError(
            "configs/oxe.py needs robot datasets: --config=configs/oxe.py:NAME=BUILDER_DIR,... "
            f"with NAME among {sorted(data_config.OXE_DATASETS)} (and optionally "
            f"{sorted(WEB)}=DIR, model={'|'.join(MODELS)}).")
    c = MODELS[model]()
    robot_weight = 0.5 if web else 1.0
    sources = data_config.oxe_mixture(entries, robot_weight=robot_weight)
    for name, path in web.items():
        sources[name] = data_config.web_source(weight=(1 - robot_weight) / len(web),
                                               builder_dir=path, **WEB[name])
    c.data.sources = sources
    c.data.weight_robots_by_size = True
    return c
