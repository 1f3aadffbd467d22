"""Convert a text list of videos into the project's JSON data list (``far.data.json_list``).

Reads one video per line, its path first (further columns, such as UCF-101's 1-based class ids, are ignored):
NBP's ``annotations/*.txt`` (``UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi<TAB>1``) or UCF-101's official
split files (``trainlist01.txt``: ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``, ``testlist01.txt``). Each
record's ``video_path`` is ``--prefix`` joined with that path; with ``--labels`` its ``label`` is the index of the
video's folder in the sorted folder names of ``--classes`` (default: the list's own folders), NBP's labelling,
which is the order of ``options/model_cfg/nbp/ucf101_class_text_ids.json``.

    python3 scripts/convert_video_list.py trainlist01.txt options/data_lists/ucf101_split1_train.json \\
        --prefix datasets/ucf101/UCF-101 --labels
"""
import argparse
import json
from pathlib import Path, PurePosixPath
from typing import List, Optional


def read_paths(text: str) -> List[str]:
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def class_names(paths: List[str]) -> List[str]:
    return sorted({PurePosixPath(path).parent.name for path in paths})


def records(paths: List[str], prefix: str, classes: Optional[List[str]]) -> List[dict]:
    """``{'video_path': prefix/path}`` per path, with ``'label'`` (the folder's index in ``classes``) when given."""
    rows = []
    for path in paths:
        row = {'video_path': joined(prefix, path)}
        if classes is not None:
            folder = PurePosixPath(path).parent.name
            if folder not in classes:
                raise ValueError(f'{path}: its folder {folder!r} is not one of the {len(classes)} classes')
            row['label'] = classes.index(folder)
        rows.append(row)
    return rows


def joined(prefix: str, path: str) -> str:
    """``prefix/path``, once: a leading folder of ``path`` that ``prefix`` ends with (``UCF-101``) is not repeated."""
    parts = PurePosixPath(path).parts
    if prefix and PurePosixPath(prefix).name == parts[0]:
        parts = parts[1:]
    return str(PurePosixPath(prefix, *parts))


def write_list(rows: List[dict], out: Path):
    """One record per line: the lists stay readable and diff well."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('[\n' + ',\n'.join(json.dumps(row) for row in rows) + '\n]\n')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('source', type=Path, help='the text list')
    parser.add_argument('out', type=Path, help='the JSON list to write')
    parser.add_argument('--prefix', default='', help="joined before every path (a leading folder it ends with, "
                                                     "e.g. UCF-101, is not repeated)")
    parser.add_argument('--labels', action='store_true', help='add each video\'s class index')
    parser.add_argument('--classes', type=Path, help='a text list whose folders are the classes (default: source)')
    args = parser.parse_args(argv)
    paths = read_paths(args.source.read_text())
    classes = None
    if args.labels:
        classes = class_names(read_paths((args.classes or args.source).read_text()))
    rows = records(paths, args.prefix, classes)
    write_list(rows, args.out)
    print(f'{args.out}: {len(rows)} videos' + (f', {len(classes)} classes' if classes else ''))


if __name__ == '__main__':
    main()
