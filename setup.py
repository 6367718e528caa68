"""rt2_jax: RT-2 (vision-language-action) in JAX/Flax.

Versions are pinned to what the test suite was run against (Python 3.11, CPU).
"""
import setuptools

INSTALL_REQUIRES = [
    "absl-py==2.5.1",
    "flax==0.12.8",
    "gymnasium==1.4.0",
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "matplotlib==3.11.2",   # the experiments' charts
    "ml-collections==1.1.0",
    "msgpack==1.2.4",       # the policy server's wire format
    "numpy==2.4.6",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "pillow==13.0.0",
    "sentencepiece==0.2.3",
    "tensorflow-cpu==2.21.0",
    "tensorboard==2.21.0",
    "tensorflow-datasets==4.9.10",
    "importlib_resources==7.1.0",  # tfds needs it to write datasets
    "tqdm==4.70.1",
    "websockets==17.4",     # the policy server and client
]

EXTRAS_REQUIRE = {
    "test": [
        "hypothesis==6.170.17",
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",   # two workers: one test process leaves a core idle while compiling
        "ruff==0.17.6",
    ],
    # Ahead-of-time compilation for TPU topologies on a CPU host (libtpu).
    "tpu": ["jax[tpu]==0.10.2", "libtpu==0.0.42.1"],
    # Optional parity tests and peer benchmarks only; never imported by the library.
    "parity": ["torch==2.13.0", "transformers==5.23.0"],
}

setuptools.setup(
    name="rt2_jax",
    version="0.1.0",
    description="RT-2 vision-language-action models in JAX/Flax",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["rt2_jax*", "data_pipelines*", "configs*"]),
    # The tokenizer, and the web-pretrained toy VLM `make demo` starts from (an orbax export).
    package_data={"rt2_jax": ["assets/*", "assets/toy_pick_web/**/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
