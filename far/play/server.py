"""The play page's server (aiohttp): the page at ``/``, and at ``/ws`` a WebSocket per player, each with its own
stream, until ``max_streams`` players are connected (the next is told the server is busy). The model makes one
frame at a time, outside the event loop, so that every connection stays responsive while a frame is made."""
import asyncio
import base64
import io
import logging
from importlib import resources
from typing import Optional

import numpy as np
from aiohttp import WSMsgType, web
from PIL import Image

from far.play.session import Session, Step
from far.play.world import World

HOST = '127.0.0.1'  # loopback only: the page drives a model on this machine
MAX_STREAMS = 4  # players served at once by default (--max-streams)

logger = logging.getLogger('far')

WORLD = web.AppKey('world', World)
MODEL_LOCK = web.AppKey('model_lock', asyncio.Lock)
PLAYERS = web.AppKey('players', set)                 # the open sockets
LIMIT = web.AppKey('max_streams', int)


def png_url(frame: Optional[np.ndarray]) -> Optional[str]:
    """A data URL of a ``[H, W, 3]`` uint8 frame (lossless PNG), or ``None``."""
    if frame is None:
        return None
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format='PNG')
    return 'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode()


def frame_message(step: Step) -> dict:
    return {'type': 'frame', 'index': step.index, 'frame': png_url(step.frame), 'truth': png_url(step.truth),
            'latency_ms': round(step.latency * 1000, 2), 'done': step.done}


def hello(world: World) -> dict:
    """What the page needs to know about the world before the first frame."""
    condition = world.sampler.condition
    return {'type': 'hello', 'num_actions': world.num_actions, 'num_episodes': world.num_episodes,
            'context_length': world.context_length, 'condition': None if condition is None else condition.kind,
            'weights': str(world.weights)}


async def on_message(request: web.Request, session: Optional[Session], message: dict):
    """Apply one client message; returns the session (a new one after ``start``) and the reply."""
    world, loop = request.app[WORLD], asyncio.get_running_loop()
    if not isinstance(message, dict):
        raise ValueError(f'a message is a JSON object with a "type", got {message!r}')
    kind = message.get('type')
    async with request.app[MODEL_LOCK]:  # one frame at a time on the model, made in a worker thread
        if kind == 'start':
            session = await loop.run_in_executor(None, lambda: Session(
                world, episode=int(message.get('episode', 0)), seed=int(message.get('seed', 0)),
                replay=bool(message.get('replay', False))))
            return session, frame_message(session.first())
        if session is None:
            raise ValueError(f"'{kind}' before 'start': start a stream first")
        if kind == 'reset':
            return session, frame_message(await loop.run_in_executor(None, session.reset,
                                                                      int(message.get('seed', session.seed))))
        if kind == 'step':
            return session, frame_message(await loop.run_in_executor(None, session.step, message.get('action')))
    raise ValueError(f"unknown message type {kind!r}: send 'start', 'step' or 'reset'")


async def play_socket(request: web.Request) -> web.WebSocketResponse:
    """One player: its own stream, from ``start`` until the socket closes."""
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    players, limit = request.app[PLAYERS], request.app[LIMIT]
    if len(players) >= limit:
        await socket.send_json({'type': 'busy', 'message': f'busy: {limit} player(s) already connected; try '
                                                           'again when one leaves'})
        await socket.close()
        return socket
    players.add(socket)
    session = None
    await socket.send_json(hello(request.app[WORLD]))
    try:
        async for raw in socket:
            if raw.type != WSMsgType.TEXT:
                continue
            try:
                session, reply = await on_message(request, session, raw.json())
            except (ValueError, TypeError) as error:  # a bad message: the player is told, the stream goes on
                reply = {'type': 'error', 'message': str(error)}
            await socket.send_json(reply)
    except ConnectionResetError:  # the player left while a frame was on its way
        logger.info('a player disconnected mid-stream')
    finally:
        players.discard(socket)
    return socket


async def page(request: web.Request) -> web.Response:
    return web.Response(text=resources.files('far.play').joinpath('page.html').read_text(), content_type='text/html')


def make_app(world: World, *, max_streams: int) -> web.Application:
    app = web.Application()
    app[WORLD], app[MODEL_LOCK], app[PLAYERS], app[LIMIT] = world, asyncio.Lock(), set(), max_streams
    app.router.add_get('/', page)
    app.router.add_get('/ws', play_socket)
    return app


async def serve(world: World, *, port: int, max_streams: int):
    """Serve the page on ``HOST:port`` (0: a free port) until cancelled; prints the address once it listens."""
    runner = web.AppRunner(make_app(world, max_streams=max_streams), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    await site.start()
    host, bound = runner.addresses[0][:2]
    print(f'playing {world.weights} at http://{host}:{bound}/ (Ctrl-C stops)', flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
