"""Play a trained world model in the browser: the command line of ``python3 scripts/play.py`` and
``python3 -m far.play``.

    python3 scripts/play.py -opt options/long_context/far_long_maze_memory.yml [--checkpoint PATH] [--port 8000]

Loads the experiment's ``test.sampler`` over its weights (``test.checkpoint``, by default the newest checkpoint of
experiments/<name>/; ``--checkpoint`` names another) and serves on 127.0.0.1 a page that streams the model's frames
from a held-out episode (``test.dataset``) of ``test.protocol.context_length`` context frames: arrow keys or buttons
send actions (an action-conditioned model), "run" lets a model without actions play by itself, replay feeds the
episode's own actions with the ground truth beside.
"""
import asyncio

from far import run
from far.experiment import load_experiment
from far.options import OptionError
from far.play.server import MAX_STREAMS, serve
from far.play.world import load_world


def parse_args(argv=None):
    parser = run.command_line(__doc__)
    parser.add_argument('--checkpoint', help='weights to play (a checkpoint folder, save_pretrained folder or state '
                                             'dict file); default: test.checkpoint')
    parser.add_argument('--port', type=int, default=8000, help='port on 127.0.0.1 (0: any free port)')
    parser.add_argument('--context', type=int, help='context frames a stream starts from (default: '
                                                    'test.protocol.context_length)')
    parser.add_argument('--max-frames', type=int, help="frames a stream keeps (default: the sampler's stream default, "
                                                       'for FAR-Long four short-term windows)')
    parser.add_argument('--max-streams', type=int, default=MAX_STREAMS,
                        help='players served at once, each with its own stream; the next is told the server is busy')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    overrides = [*args.overrides, *([f'test.checkpoint={args.checkpoint}'] if args.checkpoint else [])]
    try:
        world = load_world(load_experiment(args.opt, overrides), args.opt, root=args.root, context_length=args.context,
                           max_frames=args.max_frames)
    except OptionError as error:
        raise SystemExit(f'error: {error}') from None
    try:
        asyncio.run(serve(world, port=args.port, max_streams=args.max_streams))
    except KeyboardInterrupt:
        pass
