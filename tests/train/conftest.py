import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen3 model + tokenizer directory, built once per session."""
    from aster.config import load_config
    from aster.tiny_model import build_tiny_model

    path = tmp_path_factory.mktemp("tiny") / "model"
    return build_tiny_model(path, load_config().model.tiny, seed=0)
