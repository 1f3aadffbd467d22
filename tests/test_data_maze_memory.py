"""MazeMemory: deterministic episodes, actions that move the view, the revisit mask, enough revisits."""
import json

import numpy as np
import pytest
import torch

from far.data.maze_memory import (MOVES, START_ACTION, first_visit_mask, generate_samples, hud_colours, patrol,
                                  render_views, revisit_mask, trajectory, walk)


@pytest.fixture(scope='module')
def episodes(dataset_of, tmp_path_factory):
    return dataset_of('MazeMemory', 'val', {'root': str(tmp_path_factory.mktemp('maze')), 'num_episodes': 6,
                                            'episodes_per_shard': 4})


def test_items_follow_the_dataset_contract(episodes):
    assert len(episodes) == 6
    item = episodes[2]
    assert set(item) == {'video', 'action', 'revisit', 'first_visit', 'index'} and item['index'] == 2
    assert item['video'].shape == (96, 3, 32, 32) and item['video'].dtype == torch.float32
    assert item['action'].shape == (96,) and item['action'].dtype == torch.int64
    assert item['revisit'].shape == (96,) and item['revisit'].dtype == torch.bool
    first_visit = item['first_visit']
    assert first_visit.dtype == torch.bool and first_visit[0] and not (first_visit & item['revisit']).any()
    assert item['action'][0] == START_ACTION and set(item['action'].tolist()) <= set(MOVES)


def test_generation_is_deterministic_and_splits_differ():
    a = list(generate_samples('train', 3, 64, 12, 4, 32, 8, seed=0))
    b = list(generate_samples('train', 3, 64, 12, 4, 32, 8, seed=0))
    c = list(generate_samples('val', 3, 64, 12, 4, 32, 8, seed=0))
    assert all(np.array_equal(x['frames.npy'], y['frames.npy']) and x['json'] == y['json'] for x, y in zip(a, b))
    assert not any(np.array_equal(x['frames.npy'], y['frames.npy']) for x, y in zip(a, c))


def test_each_action_moves_the_view_by_one_cell(episodes):
    cell = 32 // 4
    for i in range(len(episodes)):
        item = episodes[i]
        video, actions = item['video'], item['action']
        for t in range(1, len(video)):
            dx, dy = MOVES[int(actions[t])]
            before, after = video[t - 1], video[t]
            # the agent moved by (dx, dy) cells: what was at (x + dx, y + dy) is now at (x, y)
            expected = before[:, max(dy, 0) * cell:32 + min(dy, 0) * cell, max(dx, 0) * cell:32 + min(dx, 0) * cell]
            seen = after[:, max(-dy, 0) * cell:32 + min(-dy, 0) * cell, max(-dx, 0) * cell:32 + min(-dx, 0) * cell]
            assert torch.equal(seen, expected), (i, t)


def test_views_slide_by_one_cell_or_tile_rooms():
    world = np.arange(6 * 6 * 3, dtype=np.uint8).reshape(6, 6, 3)  # every cell a different colour
    # stride 1, view 3: the 3 x 3 cells centred on the position, black beyond the edge
    sliding = render_views(world, [(0, 0), (1, 0), (2, 3)], view=3, resolution=3)
    assert np.array_equal(sliding[1], np.concatenate([np.zeros((1, 3, 3), np.uint8), world[0:2, 0:3]]))
    assert np.array_equal(sliding[2], world[2:5, 1:4])
    # stride == view: position (x, y) shows room (x, y), cells [2y, 2y + 2) x [2x, 2x + 2), no overlap
    rooms = render_views(world, [(0, 0), (1, 0), (2, 1)], view=2, resolution=4, stride=2)
    assert rooms.shape == (3, 4, 4, 3)
    assert np.array_equal(rooms[0, ::2, ::2], world[0:2, 0:2])
    assert np.array_equal(rooms[1, ::2, ::2], world[0:2, 2:4])
    assert np.array_equal(rooms[2, ::2, ::2], world[2:4, 4:6])


def test_actions_replay_the_positions():
    for sample in generate_samples('test', 4, 96, 12, 4, 32, 8, seed=0):
        positions, actions = sample['json']['positions'], sample['json']['actions']
        for t in range(1, len(positions)):
            dx, dy = MOVES[actions[t]]
            assert positions[t] == [positions[t - 1][0] + dx, positions[t - 1][1] + dy]
        assert all(0 <= c < 12 for p in positions for c in p)


def test_revisit_mask_on_a_hand_built_trajectory():
    # out along A B C D E, back along D C B A, then F (new), then A again right after visiting it
    a, b, c, d, e, f = (0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (0, 1)
    positions = [a, b, c, d, e, d, c, b, a, f, a]
    # window 2: a revisit needs a last visit more than 2 frames back
    #            t: 0  1  2  3  4  5  6  7  8  9  10
    expected = [0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    assert revisit_mask(positions, window=2).astype(int).tolist() == expected
    # window 4: d (t=5, last seen t=3) and c (t=6, last t=2) are recent; b (t=7, last t=1) and a (t=8, t=0) are not
    assert revisit_mask(positions, window=4).astype(int).tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    assert first_visit_mask(positions).astype(int).tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0]


def test_default_episodes_have_enough_long_term_revisits():
    fractions = [np.mean(s['json']['revisit']) for s in generate_samples('val', 16, 96, 12, 4, 32, 8, seed=0)]
    assert min(fractions) > 0.15 and np.mean(fractions) > 0.25


def test_revisits_show_what_was_seen_long_before(episodes):
    item = episodes[0]
    video, revisit = item['video'], item['revisit']
    for t in torch.nonzero(revisit).flatten().tolist():
        earlier = [s for s in range(t - 8) if torch.equal(video[s], video[t])]
        recent = [s for s in range(t - 8, t) if torch.equal(video[s], video[t])]
        assert earlier and not recent


def test_trajectory_goes_out_and_comes_back():
    positions, actions = trajectory(np.random.default_rng(0), grid=12, length=200, excursion_length=(8, 24))
    home = positions[0]
    returns = [t for t, p in enumerate(positions) if p == home]
    assert len(returns) >= 3 and len(actions) == len(positions) == 200


def test_excursions_go_out_the_set_number_of_moves_and_back_the_same_way():
    for seed in range(20):
        positions, actions = trajectory(np.random.default_rng(seed), grid=8, length=120, excursion_length=(2, 5))
        home = positions[0]
        returns = [t for t, p in enumerate(positions) if p == home]
        for start, end in zip(returns, returns[1:]):
            out = (end - start) // 2
            assert (end - start) % 2 == 0 and out <= 5  # shorter only where a self-avoiding path was stuck
            assert positions[start:end + 1] == positions[start:end + 1][::-1]  # back along the same path
        assert len(returns) >= 120 // (2 * 5)
    positions, _ = trajectory(np.random.default_rng(0), grid=12, length=60, excursion_length=(3, 3))
    assert [t for t, p in enumerate(positions) if p == positions[0]] == list(range(0, 60, 6))


def test_unset_excursion_length_is_window_to_three_windows_and_not_recorded(dataset_of, tmp_path):
    unset = list(generate_samples('train', 2, 64, 12, 4, 32, 8, seed=0))
    explicit = list(generate_samples('train', 2, 64, 12, 4, 32, 8, seed=0, excursion_length=[8, 24]))
    assert all(x['json'] == y['json'] for x, y in zip(unset, explicit))
    dataset_of('MazeMemory', 'test', {'root': str(tmp_path / 'a'), 'num_episodes': 1})
    assert 'excursion_length' not in json.loads((tmp_path / 'a' / 'test' / 'generation.json').read_text())
    dataset_of('MazeMemory', 'test', {'root': str(tmp_path / 'b'), 'num_episodes': 1, 'excursion_length': [2, 12]})
    assert json.loads((tmp_path / 'b' / 'test' / 'generation.json').read_text())['excursion_length'] == [2, 12]


def test_patrols_lap_a_block_and_repeat_with_the_period():
    for sample in generate_samples('train', 8, 40, 8, 2, 16, 8, seed=0, stride=2, route='patrol', period=12):
        frames, meta = sample['frames.npy'], sample['json']
        positions = [tuple(p) for p in meta['positions']]
        assert len(set(positions[:12])) == 12 and positions[12:] == positions[:-12]  # a lap of 12 distinct rooms
        assert all(np.array_equal(frames[t], frames[t - 12]) for t in range(12, 40))
        # neighbouring rooms share no cell (16 colours, 4 cells: equal by chance 1 time in 65536)
        assert not any(np.array_equal(frames[t], frames[t - 1]) for t in range(1, 40))
        assert meta['revisit'] == [t >= 12 for t in range(40)]  # period 12 > window 8: the second lap on
        assert all(0 <= c < 8 for p in positions for c in p)
    # every lap shape, start and direction fits in the grid
    for seed in range(200):
        positions, actions = patrol(np.random.default_rng(seed), grid=3, length=9, period=8)
        assert all(0 <= c < 3 for p in positions for c in p) and positions[8] == positions[0]


def test_walks_take_any_move_and_stay_at_the_edge():
    positions, actions = walk(np.random.default_rng(0), grid=3, length=2000)
    assert actions[0] == START_ACTION and len(positions) == len(actions) == 2000
    counts = np.bincount(actions[1:], minlength=4)
    assert counts.min() > 400  # every key pressed about as often (499.75 each)
    bumps = 0
    for t in range(1, 2000):
        x, y = positions[t - 1][0] + MOVES[actions[t]][0], positions[t - 1][1] + MOVES[actions[t]][1]
        inside = 0 <= x < 3 and 0 <= y < 3
        assert positions[t] == ((x, y) if inside else positions[t - 1])
        bumps += not inside
    assert 500 < bumps < 850  # a third of the moves from a random cell of a 3 x 3 grid point at the edge
    assert len(set(positions)) == 9


def test_rooms_with_a_readout_come_back_as_they_were_after_any_walk():
    for sample in generate_samples('train', 4, 48, 3, 2, 48, 2, seed=0, stride=2, route='walk', hud=True):
        frames, meta = sample['frames.npy'], sample['json']
        positions = [tuple(p) for p in meta['positions']]
        assert frames.shape == (48, 48, 48, 3)
        for t in range(48):
            seen = [s for s in range(t) if positions[s] == positions[t]]
            assert all(np.array_equal(frames[s], frames[t]) for s in seen)
            assert meta['revisit'][t] == (bool(seen) and t - seen[-1] > 2)
        # the readout of a grid of 3: x and y as pure red, green or blue
        assert {tuple(c) for c in hud_colours(3)} == {(255, 0, 0), (0, 255, 0), (0, 0, 255)}
        assert sum(meta['revisit']) >= 10


def test_registered_and_validated(dataset_of, tmp_path):
    ds = dataset_of('MazeMemory', 'test', {'root': str(tmp_path), 'num_episodes': 2, 'episode_length': 64, 'window': 4})
    assert ds[1]['video'].shape == (64, 3, 32, 32)
    with pytest.raises(ValueError, match='divisible by view'):
        dataset_of('MazeMemory', 'test', {'root': str(tmp_path), 'num_episodes': 2, 'view': 5})
    with pytest.raises(ValueError, match='patrol period must be even'):
        dataset_of('MazeMemory', 'test', {'root': str(tmp_path), 'num_episodes': 2, 'route': 'patrol', 'period': 15})
    with pytest.raises(ValueError, match=r'<= 4 \* \(grid - 1\) = 12'):
        dataset_of('MazeMemory', 'test', {'root': str(tmp_path), 'num_episodes': 2, 'route': 'patrol', 'period': 16,
                                          'grid': 4})
    for bad, route in (([5, 2], 'excursions'), ([0, 4], 'excursions'), ([2, 12], 'patrol')):
        with pytest.raises(ValueError, match=r'excursion_length is \[shortest, longest\] moves out'):
            dataset_of('MazeMemory', 'test', {'root': str(tmp_path), 'num_episodes': 2, 'route': route,
                                              'excursion_length': bad})
    with pytest.raises(ValueError, match=r"source\.route: got 'loop', allowed: 'excursions', 'patrol', 'walk'"):
        dataset_of('MazeMemory', 'test', {'root': str(tmp_path), 'num_episodes': 2, 'route': 'loop'})


def test_the_readout_shows_where_the_agent_is_beside_the_same_view(dataset_of, tmp_path):
    plain = list(generate_samples('train', 2, 30, 8, 2, 32, 4, seed=0, excursion_length=[2, 12]))
    framed = list(generate_samples('train', 2, 30, 8, 2, 48, 4, seed=0, excursion_length=[2, 12], hud=True))
    colours = hud_colours(8)
    assert len({tuple(c) for c in colours}) == 8
    for a, b in zip(plain, framed):
        assert a['json'] == b['json'] and b['frames.npy'].shape == (30, 48, 48, 3)
        assert np.array_equal(b['frames.npy'][:, :32, :32], a['frames.npy'])  # the view is unchanged
        x, y = np.array(b['json']['positions']).T
        assert np.array_equal(b['frames.npy'][:, :16, 32:], np.broadcast_to(colours[x][:, None, None], (30, 16, 16, 3)))
        assert np.array_equal(b['frames.npy'][:, 16:32, 32:], np.broadcast_to(colours[y][:, None, None], (30, 16, 16, 3)))
        assert not b['frames.npy'][:, 32:].any()
    # frames at the same place are equal, readout included, whatever the path that led there
    positions = [tuple(p) for p in framed[0]['json']['positions']]
    frames = framed[0]['frames.npy']
    assert all(np.array_equal(frames[s], frames[t]) for t in range(30) for s in range(t) if positions[s] == positions[t])
    with pytest.raises(ValueError, match=r'with hud, resolution must be divisible by view \+ 1 = 3'):
        dataset_of('MazeMemory', 'test', {'root': str(tmp_path), 'num_episodes': 2, 'view': 2, 'hud': True})
    dataset_of('MazeMemory', 'test', {'root': str(tmp_path / 'plain'), 'num_episodes': 1})
    assert 'hud' not in json.loads((tmp_path / 'plain' / 'test' / 'generation.json').read_text())
