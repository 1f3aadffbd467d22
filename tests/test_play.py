"""The play page (far/play, scripts/play.py): a player's session over a held-out episode, the server's sockets
(loopback only, one stream per player up to a limit, a player leaving mid-stream), the command's one-line errors,
and the page itself in headless Chromium driven by Playwright."""
import asyncio
import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import torch

from conftest import REPO, randomized
from far.data.maze_memory import MOVES, way_back
from far.experiment import load_experiment
from far.options import OptionError
from far.play import __main__ as module_command
from far.play.cli import main
from far.play.measure import psnr, squared_error
from far.play.session import Session
from far.play.world import load_world

MAZE = REPO / 'options' / 'long_context' / 'far_long_maze_memory.yml'
CHROMIUM = Path('/usr/bin/chromium')
CHROMIUM_FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync']
CONTEXT = 8


def tiny_maze(root: Path) -> list:
    """Overrides of the MazeMemory experiment: a 1-layer model, 3 steps per frame, 4 held-out episodes under
    ``root``, streams from 8 context frames."""
    return ['model.num_layers=1', 'test.sampler.num_inference_steps=3', f'datasets.test.source.root={root}',
            'datasets.test.source.num_episodes=4', f'test.protocol.context_length={CONTEXT}']


@pytest.fixture(scope='module')
def maze(tmp_path_factory):
    """The tiny MazeMemory experiment's overrides and random weights (a state dict file) for it."""
    folder = tmp_path_factory.mktemp('play')
    overrides = tiny_maze(folder / 'maze')
    torch.manual_seed(0)
    model = randomized(load_experiment(str(MAZE), overrides).build_model(), std=0.05)
    weights = folder / 'random.pth'
    torch.save(model.state_dict(), weights)
    return overrides, weights


def world_of(maze):
    overrides, weights = maze
    return load_world(load_experiment(str(MAZE), [*overrides, f'test.checkpoint={weights}']), str(MAZE))


def test_replay_feeds_the_episode_and_shows_its_truth(maze):
    world = world_of(maze)
    session = Session(world, episode=1, seed=0, replay=True)
    video = session.episode['video'][0]
    first = session.first()
    assert first.index == CONTEXT - 1 and np.array_equal(first.frame, first.truth)
    steps = [session.step(None) for _ in range(video.shape[0] - CONTEXT)]
    assert [s.index for s in steps] == list(range(CONTEXT, video.shape[0]))
    assert steps[-1].done and not any(s.done for s in steps[:-1])
    expected = (video[CONTEXT:] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.stack([s.truth for s in steps]), expected)
    assert all(s.latency > 0 and s.frame.shape == s.truth.shape for s in steps)
    with pytest.raises(ValueError, match="episode's end"):
        session.step(None)


def test_free_play_checks_actions_and_reset_repeats_the_frames(maze):
    session = Session(world_of(maze), episode=0, seed=3, replay=False)
    with pytest.raises(ValueError, match=r'action must be an integer in \[0, 4\)'):
        session.step(7)
    moves = [1, 1, 2, 3]
    first = [session.step(a).frame for a in moves]
    session.reset(seed=3)
    again = [session.step(a).frame for a in moves]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    session.reset(seed=3)
    other = [session.step(a).frame for a in [3, 0, 0, 1]]
    assert not np.array_equal(first[-1], other[-1])


def test_python_m_far_play_is_the_command(monkeypatch, capsys):
    assert module_command.main is main
    monkeypatch.setattr(sys, 'argv', ['far.play', '--help'])
    monkeypatch.delitem(sys.modules, 'far.play.__main__')  # run afresh, as `python3 -m far.play --help`
    with pytest.raises(SystemExit) as stop:
        runpy.run_module('far.play', run_name='__main__')
    assert stop.value.code == 0 and '--checkpoint' in capsys.readouterr().out


def test_frames_are_scored_in_8_bit_as_the_page_shows_them():
    black, white = np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)
    assert squared_error(black, white) == 1.0 and squared_error(white, white) == 0.0
    half = squared_error(black, np.full((2, 2, 3), 51, np.uint8))  # 0.2 off everywhere: MSE 0.04, 13.98 dB
    assert psnr([half]) == 13.98 and psnr([half, half]) == 13.98
    assert psnr([0.0, 0.0]) == 'exact' and psnr([]) is None and psnr([0.0, 0.02]) == 20.0


def test_a_recall_walk_goes_out_inside_the_world_and_retraces_its_steps(scripts):
    recall = scripts.module('scripts/play_recall.py')
    seen = [(0, 0), (1, 0), (1, 1)]
    for seed in range(20):
        out = recall.walk_out(seed, 4, seen, 6)
        rooms = [seen[-1]]
        for action in out + way_back(out):
            rooms.append((rooms[-1][0] + MOVES[action][0], rooms[-1][1] + MOVES[action][1]))
        assert len(out) == 6 and len(set(rooms[:7])) == 7 and rooms[7:] == rooms[5::-1]
        assert all(0 <= c < 4 for room in rooms for c in room) and rooms[1] not in seen  # a fresh room first
    # from an edge room of a 3 x 3 world a path visits at most 8 rooms (7 moves): 8 moves is refused, not looped on
    with pytest.raises(SystemExit, match=r'no path of 8 moves without a room twice from \(1, 0\) in a 3 x 3 world'):
        recall.walk_out(0, 3, [(1, 0)], 8, tries=50)
    assert len(recall.walk_out(0, 3, [(1, 1)], 8)) == 8  # from the centre it exists


def test_the_recall_walk_scores_each_number_of_moves(maze, scripts, capsys):
    overrides, weights = maze
    recall = scripts.module('scripts/play_recall.py')
    recall.main(['-opt', str(MAZE), *overrides, f'test.checkpoint={weights}', '--episodes', '2', '--moves', '2', '3'])
    report = json.loads(capsys.readouterr().out)
    assert report['episodes'] == 2 and set(report['moves_out']) == {'2', '3'}
    assert all(isinstance(v, float) for k in report['moves_out'].values() for v in k.values())


def test_a_world_that_cannot_stream_stops_before_serving(maze):
    overrides, weights = maze
    options = load_experiment(str(MAZE), [*overrides, f'test.checkpoint={weights}'])
    with pytest.raises(OptionError, match=r'test\.sampler: .*max_frames'):
        load_world(options, str(MAZE), max_frames=-1)
    with pytest.raises(OptionError, match=r'test\.protocol\.context_length: is 0'):
        load_world(options, str(MAZE), context_length=0)


def play_args(maze, *args, checkpoint=None):
    """The command line of scripts/play.py over the tiny world."""
    overrides, weights = maze
    return [sys.executable, str(REPO / 'scripts' / 'play.py'), '-opt', str(MAZE), *overrides,
            '--checkpoint', str(checkpoint or weights), *args]


@pytest.fixture
def server(maze, tmp_path):
    """``server(*args)``: scripts/play.py serving the tiny world on a free port; its URL. Stopped at the end."""
    processes = []

    def start(*args):
        env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
        process = subprocess.Popen(play_args(maze, '--port', '0', *args), cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        processes.append(process)
        line = process.stdout.readline()
        assert 'http://127.0.0.1:' in line, line + process.stdout.read()
        return line.split()[-3].rstrip('/')  # "playing <weights> at http://127.0.0.1:PORT/ (Ctrl-C stops)"

    yield start
    for process in processes:
        process.terminate()
        assert process.wait(timeout=30) is not None


def port_of(url: str) -> int:
    return int(url.rsplit(':', 1)[1])


async def receive(ws) -> dict:
    return json.loads((await asyncio.wait_for(ws.receive(), timeout=60)).data)


async def play_sockets(url: str):
    """A player leaves mid-stream; the next one is served; a third, beyond --max-streams 1, is told it is busy."""
    async with aiohttp.ClientSession() as client:
        leaving = await client.ws_connect(f'{url}/ws')
        assert (await receive(leaving))['type'] == 'hello'
        await leaving.send_json({'type': 'start', 'episode': 0, 'seed': 0})
        for _ in range(5):
            await leaving.send_json({'type': 'step', 'action': 1})
        await leaving.close()  # without reading its frames
        for _ in range(60):  # the slot frees once the server notices
            player = await client.ws_connect(f'{url}/ws')
            hello = await receive(player)
            if hello['type'] == 'hello':
                break
            await player.close()
            await asyncio.sleep(0.5)
        assert (hello['type'], hello['num_actions'], hello['num_episodes'], hello['context_length']) == \
            ('hello', 4, 4, CONTEXT)
        await player.send_json({'type': 'start', 'episode': 2, 'seed': 1})
        assert (await receive(player))['index'] == CONTEXT - 1
        await player.send_json({'type': 'step', 'action': 9})
        assert 'action must be an integer' in (await receive(player))['message']
        await player.send_str('[1, 2]')
        assert 'a message is a JSON object' in (await receive(player))['message']
        await player.send_json({'type': 'step', 'action': 2})
        frame = await receive(player)
        assert frame['index'] == CONTEXT and frame['frame'].startswith('data:image/png;base64,')
        second = await client.ws_connect(f'{url}/ws')
        busy = await receive(second)
        assert busy['type'] == 'busy' and 'busy' in busy['message']


@pytest.mark.slow
def test_server_is_loopback_only_and_survives_players_leaving(server):
    url = server('--max-streams', '1')
    asyncio.run(play_sockets(url))
    with pytest.raises(OSError):  # bound to 127.0.0.1 alone, not to every address of the machine
        socket.create_connection(('127.0.0.2', port_of(url)), timeout=5)


@pytest.mark.parametrize('damage', ['missing', 'damaged'])
def test_a_bad_checkpoint_stops_the_command_in_one_line(maze, tmp_path, damage):
    checkpoint = tmp_path / 'weights.pth'
    if damage == 'damaged':
        checkpoint.write_bytes(b'not a state dict')
    with pytest.raises(SystemExit) as stop:
        main(play_args(maze, checkpoint=checkpoint)[2:])
    message = str(stop.value)
    assert message.startswith('error: ') and '\n' not in message and str(checkpoint) in message, message


def shown(page, index: int):
    """Wait until the page shows frame ``index`` and waits for no other."""
    page.wait_for_function(f"!pending && document.getElementById('index').textContent === '{index}'")


def frames_after(page, seed: int, keys: list) -> list:
    """Reset to the episode's context with ``seed``, press ``keys`` one frame at a time; the frames shown."""
    page.fill('#seed', str(seed))
    page.click('#reset')
    shown(page, CONTEXT - 1)
    frames = []
    for index, key in enumerate(keys, CONTEXT):
        page.keyboard.press(key)
        shown(page, index)
        frames.append(page.get_attribute('#frame', 'src'))
    return frames


@pytest.mark.slow
def test_the_page_plays_in_headless_chromium(server, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f'{CHROMIUM} is missing: install it with the README\'s first command '
                    '(apt-get install -y chromium chromium-driver)')
    from playwright.sync_api import sync_playwright
    url = server()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / 'chromium-profile'), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url)
            shown(page, CONTEXT - 1)
            context_frame = page.get_attribute('#frame', 'src')
            assert page.locator('#actions button').count() == 4
            assert page.text_content('#fps') == '-'

            right = frames_after(page, 0, ['ArrowRight'] * 4)
            assert right[0] != context_frame
            assert float(page.text_content('#fps')) > 0 and float(page.text_content('#latency')) > 0
            assert frames_after(page, 0, ['ArrowRight'] * 4) == right
            assert frames_after(page, 0, ['ArrowLeft', 'ArrowUp', 'ArrowDown', 'ArrowLeft'])[-1] != right[-1]

            page.click('#replay')
            page.wait_for_function("!document.getElementById('truth-view').hidden && "
                                   "document.getElementById('truth').src.startsWith('data:image/png')")
            page.screenshot(path=str(tmp_path / 'play.png'))
        finally:
            browser.close()
    assert (tmp_path / 'play.png').stat().st_size > 1000
    print(f'screenshot: {tmp_path / "play.png"}')
