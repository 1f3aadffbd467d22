"""Play a trained world model in the browser (see far/play/cli.py):

    python3 scripts/play.py -opt options/long_context/far_long_maze_memory.yml [--checkpoint PATH] [--port 8000]
"""
import far  # noqa: F401  (fills the registries)
from far.play.cli import main

if __name__ == '__main__':
    main()
