"""Runs on the robot side, in its own environment (tests/robot_client/requirements.txt):
connects to a policy server with openpi's WebsocketClientPolicy or rt2_jax.client.PolicyClient,
sends the observations in an .npz file (image_0, prompt_0, image_1, ...) and prints one JSON
line: the metadata's action names, every action, and which heavy modules got imported.

    python drive.py {openpi|rt2_jax} HOST PORT OBSERVATIONS.npz
"""

import json
import sys

import numpy as np


def main(kind, host, port, path):
    data = np.load(path)
    count = len([k for k in data.files if k.startswith("image_")])
    observations = [{"observation/image" if kind == "openpi" else "image": data[f"image_{i}"],
                     "prompt": str(data[f"prompt_{i}"])} for i in range(count)]
    if kind == "openpi":
        from openpi_client import websocket_client_policy

        client = websocket_client_policy.WebsocketClientPolicy(host=host, port=int(port))
        metadata = client.get_server_metadata()
        replies = [client.infer(obs) for obs in observations]
        errors = []
        try:  # a refused request surfaces as openpi's RuntimeError; the next one still works
            client.infer({"observation/image": data["image_0"].astype(np.float32),
                          "prompt": "x"})
        except RuntimeError as err:
            errors.append(str(err))
        replies.append(client.infer(observations[0]))
    else:
        from rt2_jax.client import PolicyClient, ServerError

        client = PolicyClient(host, int(port))
        metadata = client.metadata
        replies = [client.infer(obs) for obs in observations]
        errors = []
        try:
            client.act(data["image_0"][:, :, :2].copy(), "x")
        except ServerError as err:
            errors.append(str(err))
        replies.append(client.infer(observations[0]))
        client.close()
    print(json.dumps({
        "action_names": list(metadata["action_names"]),
        "actions": [np.asarray(r["action"], np.float64).tolist() for r in replies],
        "chunks": [list(np.shape(r["actions"])) for r in replies],
        "errors": errors,
        "numpy": np.__version__,
        "heavy_modules": sorted(m for m in ("jax", "tensorflow", "flax", "torch")
                                if m in sys.modules),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
