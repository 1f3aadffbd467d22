"""Generated datasets' splits: rendered once into shards, shared by the processes started together."""
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from far.data.shards import write_shards


def write_generated_split(out_dir, params: dict, samples: Callable[[], Iterable[dict]], samples_per_shard: int):
    """Render a generated split into ``out_dir`` once; later calls with the same ``params`` do nothing.

    The split is written to a temporary sibling folder and renamed into place, so processes started
    together (DDP ranks) never read a half-written split: the first rename wins, the others discard their
    copy. Existing shards generated with other ``params`` are an error (never silently mixed or replaced).
    """
    out_dir = Path(out_dir)
    params = json.loads(json.dumps(params))  # compare as stored: tuples become lists
    if not out_dir.exists():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', dir=out_dir.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the split is shared data
        try:
            write_shards(samples(), tmp, samples_per_shard)
            (tmp / 'generation.json').write_text(json.dumps(params, indent=1, sort_keys=True))
            os.rename(tmp, out_dir)
        except OSError:
            if not out_dir.exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    manifest = out_dir / 'generation.json'
    if not manifest.is_file():
        raise ValueError(f'{out_dir} exists but was not written by this generator (it has no generation.json); '
                         f'delete or move it, or set another root')
    recorded = json.loads(manifest.read_text())
    if recorded != params:
        raise ValueError(f'{out_dir} holds shards generated with {recorded}, but the options ask for {params}; '
                         f'delete that folder to generate it again, or set another root')
