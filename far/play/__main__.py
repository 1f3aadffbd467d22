"""``python3 -m far.play``: the command line of far/play/cli.py."""
from far.play.cli import main

if __name__ == '__main__':
    main()
