"""Fixtures shared by every test folder."""
import pytest


@pytest.fixture(scope="session")
def default_package():
    """The default model, fetched and converted into the user's cache once (as serving does)."""
    from npuflow.config import load_settings
    from npuflow.models.resolve import DEFAULT_MODEL_ID, resolve_model
    return resolve_model("default", load_settings().server.cache_dir, DEFAULT_MODEL_ID)
