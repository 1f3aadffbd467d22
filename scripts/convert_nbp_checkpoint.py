"""Turn a released NBP Lightning checkpoint into a plain state dict that test.py (``test.checkpoint``) loads.

    python scripts/convert_nbp_checkpoint.py experiments/pretrained_models/NBP/ucf_base_nbp16_hybrid.ckpt

writes ``ucf_base_nbp16_hybrid.safetensors`` next to it: the transformer's weights under their own names (the
checkpoint keeps them under ``transformer.``, next to the frozen tokenizer's ``first_stage_model.*``, which the
experiment's ``autoencoder`` block loads from ``magvit2_*.pt`` instead), as ``far.conversions.nbp`` reads it.
The checkpoint is read with ``weights_only=True``; a file that pickles other objects (a Lightning callback's
state, ...) is refused with a line that says so, and ``--full-unpickle`` reads it whole, running whatever code it
names: use it only for a file you trust (the released ones, downloaded from their hub).
"""
import argparse
import sys
from pathlib import Path

from safetensors.torch import save_file

from far.conversions.nbp import read_lightning_checkpoint


def convert(checkpoint: str, output: str = None, full_unpickle: bool = False) -> Path:
    target = Path(output) if output else Path(checkpoint).with_suffix('.safetensors')
    state = read_lightning_checkpoint(checkpoint, full_unpickle)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(target))
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', help='a released .ckpt (ucf_base_nbp16_hybrid.ckpt, k600_base_nbp16.ckpt, ...)')
    parser.add_argument('--output', help='the .safetensors file to write (default: next to the checkpoint)')
    parser.add_argument('--full-unpickle', action='store_true',
                        help='read every object the checkpoint pickled (runs its code: only for a trusted file)')
    args = parser.parse_args(argv)
    try:
        print(f'wrote {convert(args.checkpoint, args.output, args.full_unpickle)}')
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    main()
