"""Encode a dataset into latent (or token) shards, so that training reads latents or tokens instead of decoding and
encoding video.

    python scripts/extract_latents.py -opt CONFIG.yml [key=value ...]
    accelerate launch --multi_gpu --num_processes 8 scripts/extract_latents.py -opt CONFIG.yml

CONFIG (every key can also be given, or overridden, as ``key.path=value`` on the command line)::

    autoencoder:                  # an AUTOENCODERS block: the autoencoder the training will use
      type: DCAutoencoder
      config: options/model_cfg/dcae/model_8x_c32_config.json
      checkpoint: experiments/pretrained_models/FAR_Models/dcae/DCAE_DMLab_Res64-17035ae5.pth
    dataset:                      # a DATASETS block (not streaming): each item's clip is encoded whole
      type: DMLab
      split: val                  # frames from 0, centre crop: the same clip on every run
      source: {type: data_list, path: datasets/dmlab/dmlab_train.json}
      read: {num_frames: 300}
    output_dir: datasets/dmlab_latent/train
    samples_per_shard: 256

Output, in the shard format of ``far.data.shards``: ``{key}.latent.npy`` (raw, unscaled latents
``[T, c, h, w]``) and ``{key}.json`` (``num_frames``, ``index``, ``label``/``actions`` when the items carry
them, ``source``, and ``crc32``, the latent's checksum, which readers check) per item, the key being the
item's index. Items are cut into shards of ``samples_per_shard`` in dataset order and shard ``s`` is
written by process ``s % num_processes``, so the output is the same for any number of processes. Once
every process is done, the main one writes ``index.json``: the shards and their sample counts, and the
autoencoder and dataset blocks used.

Train from them with the dataset source ``{type: shards, path: <output_dir>, use_latent: true}``, and the same
autoencoder block: the trainer scales the raw latents with its ``scale_latents``.

A video tokenizer (``autoencoder: {type: NBPTokenizer, ...}``) writes ``{key}.tokens.npy`` instead: the token ids
``[T', h, w]`` of the item's whole clip (uint16 for codebooks up to 65536 codes, else int32), read back with
``source: {type: shards, path: <output_dir>, use_tokens: true}`` and the same ``read.num_frames``. The clip is the
dataset's (``split: val``: frames from 0, centre crop), so training on token shards sees one fixed clip per video,
without random starts, crops or flips.
"""
import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Literal, Optional, Sequence

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, Subset

import far.data  # noqa: F401  (registers the datasets)
import far.models  # noqa: F401  (registers the autoencoders and tokenizers)
from far.data.clips import ClipDataset
from far.data.shards import PER_FRAME_JSON, SHARD_NAME, scan_shard, with_checksums
from far.models.interfaces import Autoencoder
from far.options import Block, OptionError, apply_overrides, load_yaml, to_dict, validate
from far.registry import AUTOENCODERS, DATASETS
from far.utils.distributed import LaunchError, make_accelerator, split_batches
from far.utils.logger import Progress, setup_logging

INDEX_FILE = 'index.json'
FLOAT_DTYPES = {'float16': torch.float16, 'float32': torch.float32}


@dataclass(frozen=True)
class ExtractOptions:
    autoencoder: Block(AUTOENCODERS)
    dataset: Block(DATASETS)
    output_dir: str
    samples_per_shard: int = 256
    latent_dtype: Literal['float16', 'float32'] = 'float16'  # float16 halves the disk; latents are O(1..10)
    num_workers: int = 2  # DataLoader workers decoding videos while the autoencoder runs
    overwrite: bool = False  # replace the shards and index of an earlier extraction in output_dir


def parse_options(argv: Optional[Sequence[str]]) -> ExtractOptions:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-opt', help='YAML options (optional when every key is given as key=value)')
    parser.add_argument('overrides', nargs='*', help='key.path=value, applied on top of -opt')
    args = parser.parse_args(argv)
    opt = load_yaml(args.opt) if args.opt else {}
    file = args.opt or '<command line>'
    options = validate(apply_overrides(opt, args.overrides), ExtractOptions, file)
    if options.samples_per_shard < 1:
        raise OptionError(file, 'samples_per_shard', f'must be >= 1, got {options.samples_per_shard}')
    if options.num_workers < 0:
        raise OptionError(file, 'num_workers', f'must be >= 0, got {options.num_workers}')
    return options


def sample_meta(item: dict, index: int, dataset) -> dict:
    meta = {'num_frames': len(item['video']), 'index': index}
    if 'label' in item:
        meta['label'] = int(item['label'])
    for key, (field, _) in PER_FRAME_JSON.items():
        if field in item:
            meta[key] = item[field].tolist()
    if isinstance(dataset, ClipDataset):
        meta['source'] = dataset.source.name(index)
    return meta


def write_shard(path: Path, indices: Sequence[int], items: Iterator[dict], autoencoder: Autoencoder, dataset,
                dtype: str, device, logger) -> int:
    """Encode the next ``len(indices)`` items into one shard; returns how many were written."""
    written = 0
    with wds.TarWriter(str(path), mtime=0) as sink:  # fixed mtime: byte-identical shards on every run
        for index in indices:
            item = next(items)
            if 'video' not in item:
                raise ValueError(f'the dataset yields {sorted(item)}, not video: set use_latent: false in its block')
            if item.get('index', index) != index:  # the dataset replaced an unreadable sample (and warned)
                logger.warning(f'sample {index} is unreadable: left out of {path.name}')
                continue
            sink.write(with_checksums({'__key__': f'{index:08d}',
                                       **encoded(autoencoder, item['video'][None].to(device), dtype),
                                       'json': sample_meta(item, index, dataset)}))
            written += 1
    return written


def encoded(autoencoder: Autoencoder, video: torch.Tensor, dtype: str) -> dict:
    """The shard member of one video ``[1, T, 3, H, W]``: raw latents, or a tokenizer's ids."""
    stored = autoencoder.encode_stored(video, FLOAT_DTYPES[dtype])[0].cpu().numpy()
    return {f'{autoencoder.content}.npy': stored}


def write_index(out: Path, options: ExtractOptions, autoencoder: Autoencoder, num_shards: int, num_items: int) -> dict:
    shards = [{'file': SHARD_NAME % s, 'num_samples': len(scan_shard(str(out / (SHARD_NAME % s))))}
              for s in range(num_shards)]
    index = {
        'num_samples': sum(s['num_samples'] for s in shards),
        'num_unreadable': num_items - sum(s['num_samples'] for s in shards),
        'shards': shards,
        'content': autoencoder.content,
        'latent_dtype': options.latent_dtype,
        **autoencoder.describe(),
        'autoencoder': to_dict(options.autoencoder),
        'dataset': to_dict(options.dataset),
    }
    (out / INDEX_FILE).write_text(json.dumps(index, indent=1))
    return index


def extract(options: ExtractOptions) -> Optional[dict]:
    """Run the extraction on this process; the main process returns the index it wrote."""
    out = Path(options.output_dir)
    earlier: List[Path] = sorted(out.glob('shard-*.tar')) + sorted(out.glob(INDEX_FILE))
    if earlier and not options.overwrite:
        raise FileExistsError(f'output_dir {out} already holds {earlier[0].name} ...: choose another output_dir, or '
                              f'set overwrite: true (command line: overwrite=true) to replace them')
    dataset = DATASETS.build(options.dataset)
    if isinstance(dataset, IterableDataset):
        raise ValueError(f"dataset {options.dataset['type']}: a stream has no fixed order to key latents by; "
                         f'set streaming: false')

    accelerator = make_accelerator()
    logger = setup_logging(None, accelerator.is_main_process)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        for path in earlier:
            path.unlink()
    accelerator.wait_for_everyone()

    autoencoder = AUTOENCODERS.build(options.autoencoder).to(accelerator.device).eval()
    shards = split_batches(range(len(dataset)), options.samples_per_shard, accelerator.num_processes,
                           accelerator.process_index)
    num_shards = math.ceil(len(dataset) / options.samples_per_shard)
    logger.info(f'{len(dataset)} items -> {num_shards} shards in {out}, {accelerator.num_processes} process(es)')
    mine = [i for _, indices in shards for i in indices]
    items = iter(DataLoader(Subset(dataset, mine), batch_size=None, num_workers=options.num_workers))
    progress = Progress(len(shards))
    for done, (number, indices) in enumerate(shards, 1):
        written = write_shard(out / (SHARD_NAME % number), indices, items, autoencoder, dataset,
                              options.latent_dtype, accelerator.device, logger)
        logger.info(f'{SHARD_NAME % number}: {written} samples ({done}/{len(shards)} of this process, '
                    f'{progress(done, "shard")})')
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    index = write_index(out, options, autoencoder, num_shards, len(dataset))
    logger.info(f"wrote {index['num_samples']} samples in {num_shards} shards and {out / INDEX_FILE}")
    return index


def main(argv: Optional[Sequence[str]] = None):
    extract(parse_options(argv))


if __name__ == '__main__':
    try:
        main()
    except (OptionError, LaunchError, FileExistsError) as error:
        raise SystemExit(f'error: {error}')
