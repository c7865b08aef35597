from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import lora_adapter, make_model, perturbed_copy  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def base_dir(models_dir: Path) -> Path:
    return make_model(models_dir / "base")


@pytest.fixture(scope="session")
def same_dir(base_dir: Path, models_dir: Path) -> Path:
    return Path(shutil.copytree(base_dir, models_dir / "same"))


@pytest.fixture(scope="session")
def lora_zero_dir(base_dir: Path, models_dir: Path) -> Path:
    return lora_adapter(base_dir, models_dir / "lora-zero", random=False)


@pytest.fixture(scope="session")
def lora_random_dir(base_dir: Path, models_dir: Path) -> Path:
    return lora_adapter(base_dir, models_dir / "lora-random", random=True)


@pytest.fixture(scope="session")
def full_small_dir(base_dir: Path, models_dir: Path) -> Path:
    return perturbed_copy(base_dir, models_dir / "full-small", scale=0.05)


@pytest.fixture(scope="session")
def full_large_dir(base_dir: Path, models_dir: Path) -> Path:
    return perturbed_copy(base_dir, models_dir / "full-large", scale=0.5)


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipes") / "tiny.yaml"
    path.write_text("version: 1\nextends: quick\npositions: [post_instruction, last]\n"
                    "directions:\n  max_prompts: 16\n  noise_splits: 4\n")
    return path
