"""Shared fixtures: the real embedded default model and tiny random models built from configs.

Everything runs offline: HF_HUB_OFFLINE is forced before transformers is imported.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: scripts + package

import pytest  # noqa: E402

from alpaca_cot.embedded import DEFAULT_MODEL, EMBEDDED_MODELS, cache_home, resolve_embedded  # noqa: E402

# Tests never write into the user's cache ($ALPACA_COT_HOME): they get a session home whose models/
# links the embedded models, which are converted once into the real cache (worth keeping there), and
# which receives everything else (converted legacy checkpoints, tokenization caches).
REAL_HOME = cache_home()
SESSION_HOME = Path(tempfile.mkdtemp(prefix="alpaca_cot-tests-"))
(SESSION_HOME / "models").mkdir()
os.environ["ALPACA_COT_HOME"] = str(SESSION_HOME)


def _link_embedded(name: str) -> str:
    """The session home's link to embedded model ``name``, converting it into the real cache first if needed."""
    link = SESSION_HOME / "models" / name
    if not link.exists():
        os.environ["ALPACA_COT_HOME"] = str(REAL_HOME)
        try:
            real = resolve_embedded(name)
        finally:
            os.environ["ALPACA_COT_HOME"] = str(SESSION_HOME)
        link.symlink_to(real, target_is_directory=True)
    return str(link)


for _name in EMBEDDED_MODELS:
    if (REAL_HOME / "models" / _name / "config.json").exists():
        _link_embedded(_name)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_HOME, ignore_errors=True)  # links are removed, not what they point at


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    return _link_embedded(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, tokenizer):
    """``factory(family) -> folder`` of a tiny random model of that registry family (cached per session)."""
    from tiny_models import build_tiny_model

    built = {}

    def factory(family: str, **overrides) -> str:
        key = (family, tuple(sorted(overrides.items())))
        if key not in built:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            built[key] = build_tiny_model(family, folder, tokenizer, **overrides)
        return built[key]

    return factory


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_factory) -> str:
    return tiny_model_factory("llama")


@pytest.fixture(scope="session")
def legacy_tokenizers(tmp_path_factory) -> dict:
    """``{family: (folder, fast tokenizer)}``: small vocabularies in each legacy family's layout
    (``tests/legacy_vocabs.py``) and the tokenizers ``alpaca_cot.legacy.tokenizers`` builds from them."""
    from legacy_vocabs import make_family_folder

    from alpaca_cot.legacy.tokenizers import build

    root = tmp_path_factory.mktemp("legacy-vocabs")
    out = {}
    for family in ("chatglm", "chatglm2", "chatglm3", "baichuan", "internlm", "moss"):
        folder = make_family_folder(family, root)
        out[family] = (folder, build(family, folder, {}))
    return out


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch):
    """A private tokenization cache, so a test sees cold and warm runs of its own."""
    home = tmp_path / "cache_home"
    models = home / "models"
    models.mkdir(parents=True)
    from alpaca_cot.embedded import cache_home

    real_models = cache_home() / "models"
    for child in real_models.iterdir() if real_models.exists() else []:
        (models / child.name).symlink_to(child)
    monkeypatch.setenv("ALPACA_COT_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def module_cache_home(tmp_path_factory):
    """$ALPACA_COT_HOME in a folder of the test module's own (its Arrow records cache starts empty);
    use with ``pytestmark = pytest.mark.usefixtures("module_cache_home")``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ALPACA_COT_HOME", str(tmp_path_factory.mktemp("home")))
    yield
    mp.undo()
