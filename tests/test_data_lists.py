"""The shipped data lists (options/data_lists/): NBP's UCF-101 split 1 and K600 validation lists, and the script that
converts text lists into them."""
import collections
import json
from pathlib import Path

import pytest

from far.data.json_list import JsonListSource

REPO = Path(__file__).resolve().parents[1]
LISTS = REPO / 'options' / 'data_lists'
CLASSES = json.loads((REPO / 'options' / 'model_cfg' / 'nbp' / 'ucf101_class_text_ids.json').read_text())['classes']


def records(name: str) -> list:
    return json.loads((LISTS / name).read_text())


def test_ucf101_split1_is_the_official_split_labelled_like_the_class_table():
    train, test = records('ucf101_split1_train.json'), records('ucf101_split1_test.json')
    assert (len(train), len(test)) == (9537, 3783)
    train_paths, test_paths = {r['video_path'] for r in train}, {r['video_path'] for r in test}
    assert len(train_paths | test_paths) == 13_320 and not train_paths & test_paths
    for record in train + test:
        path = Path(record['video_path'])
        assert path.parts[:3] == ('datasets', 'ucf101', 'UCF-101') and path.suffix == '.avi'
        assert CLASSES[record['label']] == path.parent.name  # the NBP models' class order
    # split 1 holds out groups 1-7 of every class
    assert {Path(r['video_path']).stem.split('_')[2] for r in test} == {f'g0{g}' for g in range(1, 8)}
    assert len(collections.Counter(r['label'] for r in train)) == 101


def test_k600_validation_list():
    val = records('k600_val.json')
    assert len(val) == 29_739 and len({r['video_path'] for r in val}) == 29_739
    assert all(r['video_path'].startswith('datasets/k600/val/') and r.keys() == {'video_path'} for r in val)


def test_the_converter_reads_official_and_nbp_lists(scripts, tmp_path):
    convert = scripts.module('scripts/convert_video_list.py')
    (tmp_path / 'trainlist01.txt').write_text('YoYo/v_YoYo_g08_c01.avi 101\n'
                                              'ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n')
    (tmp_path / 'nbp.txt').write_text('UCF-101/YoYo/v_YoYo_g08_c01.avi\t101\n')
    convert.main([str(tmp_path / 'trainlist01.txt'), str(tmp_path / 'official.json'), '--prefix', 'ucf/UCF-101',
                  '--labels'])
    convert.main([str(tmp_path / 'nbp.txt'), str(tmp_path / 'nbp.json'), '--prefix', 'ucf/UCF-101', '--labels',
                  '--classes', str(tmp_path / 'trainlist01.txt')])
    official = json.loads((tmp_path / 'official.json').read_text())
    assert official == [{'video_path': 'ucf/UCF-101/YoYo/v_YoYo_g08_c01.avi', 'label': 1},
                        {'video_path': 'ucf/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi', 'label': 0}]
    assert json.loads((tmp_path / 'nbp.json').read_text()) == official[:1]  # UCF-101/ is not repeated
    (tmp_path / 'other.txt').write_text('Archery/v_Archery_g01_c01.avi\n')
    with pytest.raises(ValueError, match="folder 'YoYo' is not one of the 1 classes"):
        convert.main([str(tmp_path / 'nbp.txt'), str(tmp_path / 'bad.json'), '--labels', '--classes',
                      str(tmp_path / 'other.txt')])


def test_a_shipped_list_reads_once_the_videos_are_in_place(tmp_path, monkeypatch):
    first = records('ucf101_split1_train.json')[0]['video_path']
    (tmp_path / first).parent.mkdir(parents=True)
    (tmp_path / first).write_bytes(b'')
    monkeypatch.chdir(tmp_path)  # the lists name paths under the working directory, as FAR's do
    source = JsonListSource(str(LISTS / 'ucf101_split1_train.json'), use_latent=False, fields=('label',))
    assert len(source) == 9537 and source.name(0) == first
