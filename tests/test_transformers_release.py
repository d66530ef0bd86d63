"""Which transformers release the suite runs on (CI runs the core tests on a second one, see .ci/run)."""

import os

import transformers


def test_transformers_release_is_one_requirements_allow():
    version = tuple(int(part) for part in transformers.__version__.split(".")[:2])
    assert (5, 23) <= version < (5, 25), transformers.__version__
    expected = os.environ.get("PYTHONPATH", "")
    if "transformers-" in expected:  # the compatibility run imports the release it installed
        assert os.path.dirname(os.path.dirname(transformers.__file__)) in expected
