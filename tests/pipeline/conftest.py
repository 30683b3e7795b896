"""A small synthetic corpus shared by the pipeline tests (built once per session)."""

import pytest

from pipeline.synth import write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(manifest path, number of good clips): 21 clips of 1-2 s plus the broken files."""
    root = tmp_path_factory.mktemp("corpus")
    return write_corpus(root, num_clips=21, duration_s=(1.0, 2.0), seed=3), 21
