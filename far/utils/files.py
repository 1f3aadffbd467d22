"""Finding files named in YAML options: relative to the working directory, else to the repository."""
from pathlib import Path
from typing import Optional, Union

REPO_ROOT = Path(__file__).resolve().parents[2]


def find_file(path: Union[str, Path]) -> Optional[Path]:
    """``path`` as given (relative to the working directory), else relative to the repository root, so the
    shipped ``options/...`` files are found from anywhere; ``None`` when neither exists."""
    for candidate in (Path(path), REPO_ROOT / path):
        if candidate.exists():
            return candidate
    return None
