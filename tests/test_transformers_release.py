"""Which transformers release the suite runs on (CI runs the core tests on a second one, see .ci/run)."""

import os

import transformers


def test_transformers_release_is_one_requirements_allow():
    version = tuple(int(part) for part in transformers.__version__.split(".")[:2])
    assert (5, 23) <= version < (5, 25), transformers.__version__
    path = os.environ.get("PYTHONPATH", "")
    if "transformers-" in path:  # the compatibility run must import the release it installed
        assert transformers.__version__ == path.split("transformers-")[-1].split(os.pathsep)[0]
